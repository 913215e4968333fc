"""Shared fixtures: real configs composed with Hydra, shrunk for CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
MODEL_CONFIGS = sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml"))


def model_cfg(name: str, data: str = "synthetic", **data_overrides) -> dict:
    """The resolved model config ``conf/model/<name>.yaml`` on the given data config."""
    cfg = OmegaConf.create({"data": OmegaConf.load(f"{CONF_DIR}/data/{data}.yaml"),
                            "model": OmegaConf.load(f"{CONF_DIR}/model/{name}.yaml")})
    for k, v in data_overrides.items():
        cfg.data[k] = v
    return OmegaConf.to_container(cfg.model, resolve=True)


def compose_cfg(config_name: str, overrides: list[str]) -> DictConfig:
    """Composes the real ``conf/<config_name>.yaml`` with command-line style overrides."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


# conf/train.yaml shrunk to seconds: synthetic data, small models, CPU, no logger.
TINY = ["data=synthetic", "data.num_train=512", "data.num_test=256", "data.val_size=128",
        "model=resnet_narrow", "model.teacher.widths=[8,16,16,32]",
        "model.student.widths=[4,8,8,16]", "trainer=cpu", "epochs.teacher=1",
        "epochs.distill=1", "logger=none"]


def tiny_train_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The TINY training config writing into ``tmp_path``."""
    return compose_cfg("train", [*TINY, f"run_dir={tmp_path}", *overrides])


def run_module(*args: str, cwd: Path | None = None, timeout: int = 300):
    """Runs ``python -m <args>`` and returns the CompletedProcess (text output)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
