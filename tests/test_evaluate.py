import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from pwl.build import build_hybrid
from pwl.checkpoint import load_hybrid, run_dir_of, saved_data_cfg
from pwl.data import SyntheticDataModule
from pwl.errors import CheckpointError, ConfigError, MaskError
from pwl.evaluate import evaluate, run
from pwl.stages import COLUMNS, read_stages
from pwl.weights import save_model_cfg, save_weights
from tests.conftest import CONF_DIR, model_cfg, run_module

ROOT = Path(__file__).resolve().parents[1]
# The run's data section refers to a top-level key, as composed configs do.
DATA = {"_target_": "pwl.data.SyntheticDataModule", "num_train": 64, "num_test": 48,
        "val_size": 16, "batch_size": 16, "image_size": 16, "in_chans": 3, "num_classes": 10,
        "data_seed": "${seed}"}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A distill run directory: hybrid weights, model.yaml and the composed config."""
    run = tmp_path / "run"
    cfg = model_cfg("resnet_narrow")
    save_weights(build_hybrid(cfg), run / "hybrid.safetensors")
    save_model_cfg(cfg, run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 3, "data": DATA}))
    return run


def run_evaluate(overrides: list[str]):
    """``evaluate`` on the real conf/evaluate.yaml, with Hydra's runtime config set as in a run."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return evaluate(cfg)
    finally:
        HydraConfig.instance().cfg = None


def teacher_accuracy(run: Path, dm: SyntheticDataModule) -> float:
    hybrid, _ = load_hybrid(run)
    images, labels = dm.splits["test"].images, dm.splits["test"].labels
    with torch.no_grad():
        preds = hybrid.teacher(dm.preprocess(images, train=False)).argmax(1)
    return (preds == labels).sum().item() / len(labels)


def test_evaluate_uses_the_runs_data_and_writes_the_files(run_dir, tmp_path):
    out = tmp_path / "out"
    result = run_evaluate([f"checkpoint={run_dir}", f"out={out}", "orders=[prefix,suffix]",
                           "device=cpu"])
    rows = read_stages(out / "stages.csv")
    assert (out / "stages.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [(r.order, r.k) for r in rows] == [(o, k) for o in ("prefix", "suffix")
                                              for k in range(5)]
    assert result.samples == 48 and result.batches == 3
    dm = SyntheticDataModule(**{k: v for k, v in DATA.items() if k != "_target_"} | {
        "data_seed": 3})
    dm.setup()
    assert rows[4].mask == "TTTT" and rows[4].accuracy == teacher_accuracy(run_dir, dm)
    doc = json.loads((out / "stages.json").read_text())
    assert doc["split"] == "test" and doc["checkpoint"] == str(run_dir)
    assert doc["evaluations"][0]["naive_block_runs"] == 3 * 8 * 4
    assert (out / "stages.png").is_file()


def test_data_overrides_replace_the_runs_data(run_dir, tmp_path):
    result = run_evaluate([f"checkpoint={run_dir}", f"out={tmp_path / 'out'}", "data=synthetic",
                           "data.num_test=40", "batch_size=8", "limit_batches=2",
                           "orders=[TSTS]"])
    assert result.samples == 16 and [r.mask for r in result.rows] == ["TSTS"]
    with pytest.raises(ConfigError, match=r"shape \[3, 8, 8\] but the model expects"):
        run_evaluate([f"checkpoint={run_dir}", f"out={tmp_path / 'out'}", "data=synthetic",
                      "data.image_size=8"])


def test_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="checkpoint is not set"):
        run_evaluate([])
    out = f"out={tmp_path / 'out'}"
    with pytest.raises(CheckpointError, match="does not exist"):
        run_evaluate([f"checkpoint={tmp_path / 'nope'}", out])
    with pytest.raises(ConfigError, match="device='tpu'"):
        run_evaluate([f"checkpoint={run_dir}", "device=tpu", out])
    with pytest.raises(ConfigError, match="split='train'"):
        run_evaluate([f"checkpoint={run_dir}", "split=train", out])
    with pytest.raises(MaskError, match="neither a loading order"):
        run_evaluate([f"checkpoint={run_dir}", "orders=[prefx]", out])
    (run_dir / ".hydra" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="has no saved data config; pass one with data=<name>"):
        run_evaluate([f"checkpoint={run_dir}", out])
    assert not (tmp_path / "out").exists()


def test_a_lightning_checkpoint_uses_its_runs_data(run_dir, tmp_path):
    hybrid, cfg = load_hybrid(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"hyper_parameters": {"model_cfg": cfg},
                "state_dict": {f"hybrid.{k}": v for k, v in hybrid.state_dict().items()}}, ckpt)
    result = run_evaluate([f"checkpoint={ckpt}", f"out={tmp_path / 'out'}", "orders=[prefix]"])
    assert result.samples == 48
    reference = run_evaluate([f"checkpoint={run_dir}", f"out={tmp_path / 'ref'}",
                              "orders=[prefix]"])
    assert [r.accuracy for r in result.rows] == [r.accuracy for r in reference.rows]


def test_a_bundle_uses_the_data_of_its_manifest(run_dir, tmp_path):
    from pwl.runtime import write_bundle

    hybrid, cfg = load_hybrid(run_dir)
    bundle = tmp_path / "bundle"
    write_bundle(hybrid, cfg, bundle, data_cfg={**DATA, "num_test": 24, "data_seed": 3})
    result = run_evaluate([f"checkpoint={bundle}", f"out={tmp_path / 'out'}", "orders=[prefix]"])
    assert result.samples == 24
    assert (tmp_path / "out" / "stages.csv").is_file()


def test_run_dir_of_a_checkpoint_file(tmp_path):
    assert run_dir_of(tmp_path / "checkpoints" / "last.ckpt") == tmp_path
    assert run_dir_of(tmp_path / "model.ckpt") == tmp_path


def test_saved_data_cfg_of_a_run(run_dir, tmp_path):
    config = run_dir / ".hydra" / "config.yaml"
    data, source = saved_data_cfg(run_dir / "checkpoints" / "last.ckpt", fix="-")
    assert source == config and data == {**DATA, "data_seed": 3}
    assert saved_data_cfg(tmp_path / "elsewhere", fix="-") == (None, None)
    config.write_text(yaml.safe_dump({"data": DATA}))  # ${seed} no longer resolves
    with pytest.raises(ConfigError, match=r"config\.yaml does not resolve .*; pass data=<name>"):
        saved_data_cfg(run_dir, fix="pass data=<name>")


def test_command_line(run_dir, tmp_path):
    hydra_dir = tmp_path / "hydra_run"
    ok = run_module("pwl.evaluate", f"checkpoint={run_dir}", "orders=[prefix]",
                    f"hydra.run.dir={hydra_dir}", cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert len(read_stages(hydra_dir / "stages.csv")) == 5
    assert "prefix AUC" in ok.stdout and "stages.csv" in ok.stdout



def test_a_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"checkpoint={tmp_path}/nope",
                                             f"out={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_:
        run(cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "does not exist" in err
