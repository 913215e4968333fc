"""Shared fixtures: real configs composed with Hydra, shrunk for CPU."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from pwl.build import build_hybrid
from pwl.runtime import StageRecord, write_bundle

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# The image model pairs; _base.yaml holds their shared keys and is not a pair. The language
# model pairs (gpt_*) take text and are tested in tests/test_lm.py.
MODEL_CONFIGS = sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml")
                       if not p.stem.startswith(("_", "gpt_")))


@functools.cache
def _model_and_data(name: str, data: str) -> DictConfig:
    # Composed by Hydra, not loaded by hand: model files extend _base.yaml in their defaults.
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(overrides=[f"+model={name}", f"+data={data}"])


def model_cfg(name: str, data: str = "synthetic", **data_overrides) -> dict:
    """The resolved model config ``conf/model/<name>.yaml`` on the given data config."""
    cfg = _model_and_data(name, data).copy()
    with open_dict(cfg):
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


# Tiny bundles: shared by the bundle, runtime and serve/bench tests.
BUNDLE_STAGES = [{"mask": "SSSS", "accuracy": 0.5}, {"mask": "TSSS", "accuracy": 0.6},
                 {"mask": "TTTT", "accuracy": 0.9}]
BUNDLE_DATA_CFG = {"_target_": "pwl.data.SyntheticDataModule", "num_train": 64,
                   "num_test": 128, "batch_size": 32, "image_size": 16, "in_chans": 3,
                   "num_classes": 10}


def tiny_hybrid(cfg=None):
    """A resnet_narrow hybrid whose adapters and BatchNorm statistics are not at their init."""
    cfg = cfg or model_cfg("resnet_narrow")
    hybrid = build_hybrid(cfg).eval()
    with torch.no_grad():
        for p in hybrid.adapters.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, buf in hybrid.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return hybrid, cfg


def export_tiny(path, cfg=None, **kwargs):
    """``tiny_hybrid`` exported as a bundle at ``path``; returns the hybrid and the bundle dir."""
    hybrid, cfg = tiny_hybrid(cfg)
    kwargs["stages"] = stage_records(kwargs.get("stages", BUNDLE_STAGES) or ())
    kwargs.setdefault("data_cfg", BUNDLE_DATA_CFG)
    write_bundle(hybrid, cfg, path, **kwargs)
    return hybrid, Path(path)


def stage_records(rows):
    """Stage records from rows with a mask and an accuracy."""
    return [StageRecord(mask=r["mask"], k=r["mask"].count("T"), accuracy=r["accuracy"])
            for r in rows]


def flip_byte(path, offset=None):
    """Corrupts one byte of a file (the middle one by default)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    """Cuts a file to half its size."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``).

    The file is a 7-byte header, then records in 32 KiB blocks, each chunk with a
    7-byte header (crc32, little-endian length, chunk type: 1 full, 2 first, 3 middle,
    4 last) -- the LevelDB log format W&B uses.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def load_script(name: str):
    """The script ``experiments/<name>.py`` as a module, registered under ``name`` so the
    scripts it imports beside it (``from reproduce import ...``) resolve as from a shell."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    for dependency in ("provenance", "reproduce"):
        if dependency != name and f"from {dependency} import" in path.read_text():
            load_script(dependency)
    spec.loader.exec_module(module)
    return module

