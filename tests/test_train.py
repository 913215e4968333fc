"""Training phases through the real Hydra config (shrunk to seconds on CPU)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from pwl.checkpoint import load_hybrid
from pwl.train import phase_from_stage, train
from pwl.weights import HYBRID_FILE, TEACHER_FILE, read_model_cfg
from tests.conftest import CONF_DIR, TINY, run_module, tiny_train_cfg


def _train_teacher(tmp_path: Path, *overrides: str) -> Path:
    run_dir = tmp_path / "teacher"
    train(tiny_train_cfg(run_dir, "phase=teacher", *overrides))
    return run_dir


def test_teacher_on_synthetic_data_passes_90_percent(tmp_path):
    metrics = train(tiny_train_cfg(tmp_path, "phase=teacher", "epochs.teacher=3",
                                   "data.num_train=1024", "optim.optimizer.lr=0.05"))
    assert metrics["test/acc"] > 0.9
    assert (tmp_path / TEACHER_FILE).is_file()
    assert read_model_cfg(tmp_path / "model.yaml")["teacher"]["widths"] == [8, 16, 16, 32]
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


class _Snapshot(L.Callback):
    """Keeps the teacher state and the student/adapter parameters before fitting."""

    def on_train_start(self, trainer, pl_module):
        hybrid = pl_module.hybrid
        self.teacher = {k: v.clone() for k, v in hybrid.teacher.state_dict().items()}
        self.student = {k: v.clone() for k, v in hybrid.student.named_parameters()}
        self.adapters = {k: v.clone() for k, v in hybrid.adapters.named_parameters()}


def test_distill_freezes_teacher_and_trains_student_and_adapters(tmp_path):
    teacher_dir = _train_teacher(tmp_path)
    cfg = tiny_train_cfg(tmp_path / "distill", "phase=distill", f"teacher={teacher_dir}",
                         "loss=pwl", "trainer.limit_train_batches=4", "logger=csv",
                         "trainer.log_every_n_steps=1")
    snap = _Snapshot()
    metrics = train(cfg, extra_callbacks=[snap])

    hybrid, _ = load_hybrid(tmp_path / "distill")
    after_teacher = hybrid.teacher.state_dict()
    assert snap.teacher.keys() == after_teacher.keys()
    for k, v in snap.teacher.items():   # parameters and BatchNorm buffers, bit for bit
        assert torch.equal(v, after_teacher[k]), k
    student = dict(hybrid.student.named_parameters())
    assert any(not torch.equal(v, student[k]) for k, v in snap.student.items())
    adapters = dict(hybrid.adapters.named_parameters())
    changed = [k for k, v in snap.adapters.items() if not torch.equal(v, adapters[k])]
    assert changed and any("to_student" in k for k in changed)
    assert any("to_teacher" in k for k in changed)

    from omegaconf import OmegaConf
    terms = OmegaConf.to_container(cfg.loss.terms)
    logged = (tmp_path / "distill" / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in terms:
        assert f"train/loss/{name}" in logged
    # The last step's total is the weighted sum of its logged terms.
    weighted = sum(term["weight"] * metrics[f"train/loss/{name}"] for name, term in terms.items())
    assert metrics["train/loss"] == pytest.approx(weighted, rel=1e-5)
    assert (tmp_path / "distill" / HYBRID_FILE).is_file()


def test_resume_continues_at_the_saved_step(tmp_path):
    first = tmp_path / "first"
    train(tiny_train_cfg(first, "phase=teacher", "trainer.limit_train_batches=3", "test=false"))
    last = first / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step == 3

    seen = {}

    class _StepAtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step

    train(tiny_train_cfg(tmp_path / "second", "phase=teacher", f"ckpt_path={last}",
                         "epochs.teacher=2", "trainer.limit_train_batches=3", "test=false"),
          extra_callbacks=[_StepAtStart()])
    assert seen["step"] == saved_step


def test_cli_errors_are_one_line(tmp_path):
    nope = run_module("pwl.train", "phase=distill", "loss=nope", f"run_dir={tmp_path}",
                      cwd=tmp_path)
    assert nope.returncode != 0
    assert "Traceback" not in nope.stderr
    assert "loss/nope" in nope.stderr and "pwl" in nope.stderr  # lists the known presets

    # The old spelling stage= still runs, with one line saying to use phase=.
    no_teacher = run_module("pwl.train", "stage=distill", "data=synthetic", "logger=none",
                            f"run_dir={tmp_path}", cwd=tmp_path)
    assert no_teacher.returncode == 2
    assert "Traceback" not in no_teacher.stderr
    lines = [ln for ln in no_teacher.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "phase=distill needs teacher=" in lines[0]
    warned = [ln for ln in no_teacher.stderr.splitlines() if "deprecated" in ln]
    assert warned == ["warning: stage=distill is deprecated and goes in the next release; "
                      "use phase=distill"]


def test_stage_maps_onto_phase_and_nothing_else_changes(capsys):
    assert phase_from_stage(["-m", "stage=teacher,distill", "seed=1"]) == [
        "-m", "phase=teacher,distill", "seed=1"]
    assert capsys.readouterr().err.count("\n") == 1
    assert phase_from_stage(["phase=teacher", "callbacks.stage_eval.split=val"]) == [
        "phase=teacher", "callbacks.stage_eval.split=val"]
    assert capsys.readouterr().err == ""


def test_the_phase_picks_module_monitor_epochs_callbacks_and_run_dir():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        teacher = compose("train", ["phase=teacher", "epochs.teacher=3"],
                          return_hydra_config=True)
        distill = compose("train", ["epochs.distill=4"], return_hydra_config=True)
    assert teacher.phase.module._target_ == "pwl.lit.TeacherModule"
    assert (teacher.monitor, teacher.trainer.max_epochs) == ("val/acc", 3)
    assert teacher.callbacks.stage_eval is None and teacher.callbacks.model_checkpoint
    assert teacher.hydra.run.dir.startswith("runs/teacher/resnet/")
    assert distill.phase.module._target_ == "pwl.lit.DistillModule"
    assert (distill.monitor, distill.trainer.max_epochs) == ("stages/prefix_auc", 4)
    assert distill.callbacks.stage_eval._target_ == "pwl.callbacks.StageEval"
    assert distill.hydra.run.dir.startswith("runs/distill/resnet/")


def test_mismatched_teacher_names_file_and_architecture(tmp_path):
    teacher_dir = _train_teacher(tmp_path, "test=false")
    result = run_module("pwl.train", "phase=distill", f"teacher={teacher_dir}",
                        "data=synthetic", "model=resnet", "logger=none",
                        f"run_dir={tmp_path / 'd'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(teacher_dir / TEACHER_FILE) in result.stderr
    assert "pwl.models.resnet" in result.stderr


@pytest.mark.slow
def test_a_run_repeats_from_its_saved_config(tmp_path):
    """Same seed, same stages.csv; and the run's .hydra/config.yaml alone is enough to redo it."""
    import csv

    teacher_dir = _train_teacher(tmp_path, "test=false")
    first, again = tmp_path / "a", tmp_path / "b"
    runs = [run_module("pwl.train", "phase=distill", f"teacher={teacher_dir}", *TINY, "seed=7",
                       "trainer.limit_train_batches=3", "test=false", "data.crop_padding=1",
                       "data.hflip=0.5", f"hydra.run.dir={first}", cwd=tmp_path)]
    runs.append(run_module("pwl.train", "--config-path", str(first / ".hydra"),
                           "--config-name", "config", f"hydra.run.dir={again}", cwd=tmp_path))
    tables = []
    for result, run in zip(runs, (first, again)):
        assert result.returncode == 0, result.stderr[-2000:]
        with (run / "stages.csv").open() as f:
            # ms_per_batch is a time measurement; everything else must repeat exactly.
            tables.append([{k: v for k, v in row.items() if k != "ms_per_batch"}
                           for row in csv.DictReader(f)])
    assert tables[0] == tables[1] and len(tables[0]) == 5
    assert {row["accuracy"] for row in tables[0]} != {tables[0][0]["accuracy"]}


def test_wandb_logger_defaults_to_offline_and_keeps_the_stages_table(tmp_path, monkeypatch):
    import csv

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))   # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    teacher_dir = _train_teacher(tmp_path, "test=false")
    run = tmp_path / "distill"
    train(tiny_train_cfg(run, "phase=distill", f"teacher={teacher_dir}", "logger=wandb",
                         "epochs.distill=2", "trainer.limit_train_batches=2"))
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    tables = list(offline_runs[0].glob("files/media/table/**/*.table.json"))
    assert tables, "the stages table was not logged"
    with (run / "stages.csv").open() as f:
        rows = list(csv.DictReader(f))
    prefix = {(r["epoch"], r["k"]) for r in rows if r["order"] == "prefix"}
    assert prefix == {(str(e), str(k)) for e in (0, 1) for k in range(5)}


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path):
    from pwl.config import to_dict
    from pwl.lit import DistillModule

    cfg = tiny_train_cfg(tmp_path)
    module = DistillModule(to_dict(cfg.model), to_dict(cfg.loss), to_dict(cfg.optim))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    module.loss.forward = lambda outputs: (torch.tensor(float("nan")),
                                           {"ce": torch.tensor(1.0),
                                            "kd": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError, match=r"not finite at step 0 \(terms \['kd'\]\)"):
        module.training_step((x, y), 0)


def test_saved_weights_are_the_best_on_validation_without_a_test(tmp_path):
    teacher = _train_teacher(tmp_path / "teacher")
    run = tmp_path / "distill"
    train(tiny_train_cfg(run, "phase=distill", f"teacher={teacher}", "test=false",
                         "epochs.distill=3", "trainer.limit_train_batches=2",
                         "trainer.limit_val_batches=1"))
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")  # save_top_k=1: the best epoch
    best_state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    saved = load_file(run / HYBRID_FILE)
    expected = {k.removeprefix("hybrid."): v for k, v in best_state.items()}
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)


class _ValAccByEpoch(L.Callback):
    """The student's val/acc and the checkpoint callback's monitor after each validation."""

    def __init__(self):
        self.val_acc, self.monitor = [], None

    def on_validation_epoch_end(self, trainer, pl_module):
        self.monitor = trainer.checkpoint_callback.monitor
        self.val_acc.append(float(trainer.callback_metrics["val/acc"]))


@pytest.mark.parametrize(("loss", "monitor"), [("kd", "val/acc"), ("ce", "val/acc"),
                                               ("pwl", "stages/prefix_auc")])
def test_baselines_choose_their_checkpoint_on_the_student_and_pwl_on_the_prefix_curve(
        tmp_path, loss, monitor):
    teacher = _train_teacher(tmp_path / "teacher")
    probe = _ValAccByEpoch()
    train(tiny_train_cfg(tmp_path / "distill", "phase=distill", f"teacher={teacher}",
                         f"loss={loss}", "test=false", "epochs.distill=3",
                         "trainer.limit_train_batches=2", "optim.optimizer.lr=0.5"),
          extra_callbacks=[probe])
    assert probe.monitor == monitor
    if loss != "pwl":
        (best,) = (tmp_path / "distill" / "checkpoints").glob("epoch*.ckpt")
        assert int(best.stem.removeprefix("epoch")) == probe.val_acc.index(max(probe.val_acc))


class _FallingScore(L.Callback):
    """Logs a score that is best at epoch 0 and worse after, as a monitor that stops improving."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("probe/score", -float(trainer.current_epoch))


def test_last_ckpt_is_the_last_epoch_even_when_the_monitor_stopped_improving(tmp_path):
    run = tmp_path / "teacher"
    train(tiny_train_cfg(run, "phase=teacher", "epochs.teacher=3", "monitor=probe/score",
                         "trainer.limit_train_batches=2", "test=false"),
          extra_callbacks=[_FallingScore()])
    best = sorted(p.name for p in (run / "checkpoints").glob("epoch*.ckpt"))
    assert best == ["epoch000.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2   # what ckpt_path= resumes from: the last epoch, not the best


def test_scheduler_min_lr_is_the_floor_of_every_group():
    from pwl.lit.optim import build_optimizer, build_scheduler

    w = torch.nn.Parameter(torch.zeros(1))
    v = torch.nn.Parameter(torch.zeros(1))
    optim = {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05},
             "scheduler": {"warmup_epochs": 0, "min_lr": 1e-5}}
    opt = build_optimizer(optim, [{"params": [w]}, {"params": [v], "lr_mult": 0.2}])
    sched = build_scheduler(optim, opt, total_steps=10, steps_per_epoch=5)["scheduler"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.01])
    for _ in range(10):
        opt.step()
        sched.step()
    # The reference's cosine ends at 1e-5 in every group, adapters' included.
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-5])
