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
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
