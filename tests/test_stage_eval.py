import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from pwl.build import build_hybrid
from pwl.callbacks import StageEval, stage_eval
from pwl.data import SyntheticDataModule
from pwl.errors import ConfigError, MaskError
from pwl.lit import TeacherModule
from pwl.stages import COLUMNS, read_stages
from pwl.train import train
from tests.conftest import model_cfg, tiny_train_cfg

N = 4
LIMIT = 2


class TinyDistill(L.LightningModule):
    """Just enough of a distillation module: ``.hybrid``, a student CE loss and a mixed path."""

    def __init__(self) -> None:
        super().__init__()
        self.hybrid = build_hybrid(model_cfg("resnet_narrow"))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return (F.cross_entropy(self.hybrid(images, "S" * N), labels)
                + F.cross_entropy(self.hybrid(images, "TTSS"), labels))

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val/loss", F.cross_entropy(self.hybrid(images, "S" * N), labels))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        params = [p for p in self.hybrid.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.1)


def datamodule() -> SyntheticDataModule:
    return SyntheticDataModule(num_train=256, num_test=96, val_size=96, batch_size=32)


def trainer(tmp_path, callbacks, logger, epochs: int = 2) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, limit_train_batches=LIMIT, limit_val_batches=LIMIT,
                     limit_test_batches=LIMIT, accelerator="cpu", devices=1, logger=logger,
                     callbacks=callbacks, default_root_dir=tmp_path, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False,
                     num_sanity_val_steps=1)


@torch.no_grad()
def accuracy_alone(net, dm: SyntheticDataModule, loader) -> float:
    """Accuracy of one network over the first LIMIT batches, outside the callback."""
    net.eval()
    correct = total = 0
    for b, (images, labels) in enumerate(loader):
        if b == LIMIT:
            break
        correct += (net(dm.preprocess(images, train=False)).argmax(1) == labels).sum().item()
        total += len(labels)
    return correct / total


def test_fit_writes_the_prefix_curve_of_every_epoch(tmp_path, monkeypatch):
    evaluations = []

    class CountingEvaluator(stage_eval.StageEvaluator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            evaluations.append(self)

    monkeypatch.setattr(stage_eval, "StageEvaluator", CountingEvaluator)
    dm, module = datamodule(), TinyDistill()
    callback = StageEval(orders=["prefix"], every_n_epochs=1)
    t = trainer(tmp_path, [callback], CSVLogger(tmp_path))
    t.fit(module, datamodule=dm)

    rows = read_stages(tmp_path / "stages.csv")
    assert [(r.epoch, r.order, r.k) for r in rows] == \
        [(e, "prefix", k) for e in (0, 1) for k in range(N + 1)]
    assert len(evaluations) == 2, "the sanity-check validation is not evaluated"
    teacher = accuracy_alone(module.hybrid.teacher, dm, dm.val_dataloader())
    student = accuracy_alone(module.hybrid.student, dm, dm.val_dataloader())
    last = [r for r in rows if r.epoch == 1]
    assert last[N].accuracy == teacher and last[0].accuracy == student
    # The teacher is frozen: its point is the same every epoch.
    assert rows[N].accuracy == teacher
    assert module.hybrid.training, "the callback restores train mode"

    doc = json.loads((tmp_path / "stages.json").read_text())
    assert [e["block_runs"] for e in doc["evaluations"]] == [14 * LIMIT] * 2
    assert [e["naive_block_runs"] for e in doc["evaluations"]] == [20 * LIMIT] * 2
    assert (tmp_path / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = t.callback_metrics
    assert metrics["stages/prefix/k4"].item() == pytest.approx(teacher)
    assert metrics["stages/prefix_auc"].item() == pytest.approx(sum(r.accuracy for r in last) / 5)
    with open(t.logger.log_dir + "/metrics.csv") as f:
        assert "stages/prefix/k0" in f.readline()

    t.test(module, datamodule=dm)
    test_rows = read_stages(tmp_path / "stages_test.csv")
    assert [r.mask for r in test_rows] == ["T" * k + "S" * (N - k) for k in range(N + 1)]
    assert test_rows[N].accuracy == accuracy_alone(module.hybrid.teacher, dm,
                                                   dm.test_dataloader())
    assert "stages_test/prefix_auc" in t.callback_metrics
    assert len(read_stages(tmp_path / "stages.csv")) == 2 * (N + 1), "test rows stay apart"


def test_every_n_epochs_and_explicit_masks(tmp_path):
    callback = StageEval(orders=["TSTS", "suffix"], every_n_epochs=2, out_dir=str(tmp_path / "o"),
                         log_wandb=False)
    trainer(tmp_path, [callback], False, epochs=3).fit(TinyDistill(), datamodule=datamodule())
    rows = read_stages(tmp_path / "o" / "stages.csv")
    assert {r.epoch for r in rows} == {1}
    assert [(r.order, r.mask) for r in rows][:2] == [("custom", "TSTS"), ("suffix", "SSSS")]


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="every_n_epochs"):
        StageEval(every_n_epochs=0)
    with pytest.raises(ConfigError, match="split"):
        StageEval(split="train")
    module = TinyDistill()
    with pytest.raises(MaskError, match="length 3"):
        trainer(tmp_path, [StageEval(orders=["TTS"])], False).fit(module, datamodule=datamodule())
    assert module.global_step == 0
    teacher_only = TeacherModule(model_cfg("resnet_narrow"), {"optimizer": {
        "_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}})
    with pytest.raises(ConfigError, match="leave callbacks.stage_eval out"):
        trainer(tmp_path, [StageEval()], False).fit(teacher_only, datamodule=datamodule())
    assert teacher_only.global_step == 0


def test_wandb_offline_run_keeps_the_stages_table(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    try:
        logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="pwl-test")
        trainer(tmp_path, [StageEval(orders=["prefix"])], logger, epochs=1).fit(
            TinyDistill(), datamodule=datamodule())
    finally:
        wandb.finish()
    tables = {}
    for run in (tmp_path / "wandb").glob("offline-run-*"):
        for path in (run / "files" / "media" / "table").rglob("*.table.json"):
            tables[path.relative_to(run).as_posix()] = json.loads(path.read_text())
    stages = [t for t in tables.values() if t["columns"] == list(COLUMNS)]
    assert len(stages) == 1, sorted(tables)
    assert [row[3] for row in stages[0]["data"]] == ["T" * k + "S" * (N - k) for k in range(N + 1)]
    charts = [t for t in tables.values() if t["columns"][:2] in (["order", "teacher_blocks"],
                                                                  ["order", "mb_loaded"])]
    assert len(charts) == 2


def test_ddp_counts_are_summed_over_processes(tmp_path):
    # Two CPU processes, each validating half of the split (DistributedSampler).
    dm = SyntheticDataModule(num_train=256, num_test=32, val_size=96, batch_size=32,
                             eval_batch_size=16)
    module = TinyDistill()
    L.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=2,
              strategy="ddp_spawn_find_unused_parameters_true", logger=False,
              callbacks=[StageEval(orders=["prefix"])], default_root_dir=tmp_path,
              enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0).fit(module, datamodule=dm)
    rows = read_stages(tmp_path / "stages.csv")
    assert len(rows) == N + 1, "rank 0 alone writes the files"
    (evaluation,) = json.loads((tmp_path / "stages.json").read_text())["evaluations"]
    assert evaluation["samples"] == 96 and evaluation["batches"] == 2 * 3
    assert evaluation["block_runs"] == 14 * 6
    dm.setup()
    whole_split = [(dm.splits["val"].images, dm.splits["val"].labels)]
    # The frozen teacher is the same in every process, so its accuracy on the whole split
    # is what the summed counts must give.
    assert rows[N].accuracy == accuracy_alone(module.hybrid.teacher, dm, whole_split)


# The real config (debug=fast, synthetic data, tiny pair): the checkpoint's monitor exists
# whatever stage_eval is told, so distillation never stops after its first epoch.
@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("teacher")
    train(tiny_train_cfg(run_dir, "phase=teacher", "debug=fast", "test=false"))
    return run_dir


def distill(run_dir, teacher, *overrides: str) -> dict[str, float]:
    return train(tiny_train_cfg(run_dir, "phase=distill", f"teacher={teacher}", "debug=fast",
                                *overrides))


def test_every_second_epoch_checkpoints_only_where_the_monitor_is_logged(tmp_path, teacher_dir):
    metrics = distill(tmp_path, teacher_dir, "callbacks.stage_eval.every_n_epochs=2",
                      "trainer.max_epochs=3")
    assert {r.epoch for r in read_stages(tmp_path / "stages.csv")} == {1}
    assert [p.name for p in (tmp_path / "checkpoints").glob("epoch*.ckpt")] == ["epoch001.ckpt"]
    assert "stages/prefix_auc" in metrics and "stages_test/prefix_auc" in metrics


def test_suffix_only_curves_still_log_the_prefix_monitor(tmp_path, teacher_dir):
    metrics = distill(tmp_path, teacher_dir, "callbacks.stage_eval.orders=[suffix]",
                      "trainer.max_epochs=2")
    rows = read_stages(tmp_path / "stages.csv")
    assert {r.order for r in rows} == {"suffix"}, "the monitor's prefix masks stay out"
    assert [r.mask for r in rows if r.epoch == 1] == ["S" * (N - k) + "T" * k
                                                      for k in range(N + 1)]
    assert "stages/prefix_auc" in metrics and "stages/prefix/k1" not in metrics
    assert "stages/suffix/k1" in metrics
    assert len(list((tmp_path / "checkpoints").glob("epoch*.ckpt"))) == 1


def test_a_test_split_curve_never_feeds_the_checkpoint_monitor(tmp_path, monkeypatch):
    evaluations = []

    class RecordingEvaluator(stage_eval.StageEvaluator):
        def result(self, *args, **kwargs):
            res = super().result(*args, **kwargs)
            evaluations.append((self.pairs, res))
            return res

    monkeypatch.setattr(stage_eval, "StageEvaluator", RecordingEvaluator)
    dm = datamodule()
    callback = StageEval(orders=["suffix"], split="test", log_wandb=False)
    t = trainer(tmp_path, [callback], False, epochs=1)
    t.fit(TinyDistill(), datamodule=dm)

    (curve_pairs, curve), (monitor_pairs, monitor) = evaluations
    assert {order for order, _ in curve_pairs} == {"suffix"}
    assert curve.samples == len(dm.splits["test"].labels), "the curve: the whole test split"
    assert {order for order, _ in monitor_pairs} == {"prefix"}
    assert monitor.samples == LIMIT * dm.eval_batch_size, "the monitor: limited validation"
    metrics = t.callback_metrics
    assert metrics["stages/prefix_auc"].item() == pytest.approx(monitor.prefix_auc)
    assert metrics["stages_test/suffix/k0"].item() == pytest.approx(curve.accuracy("S" * N))
    assert not [k for k in metrics if k.startswith("stages/suffix")]
    assert json.loads((tmp_path / "stages.json").read_text())["split"] == "test"
