"""Model files of a run directory, and loading them back.

A teacher run writes ``teacher.safetensors`` and ``model.yaml`` (the resolved
model config); a distill run writes ``hybrid.safetensors`` (teacher, student
and adapters) and ``model.yaml``. Lightning ``.ckpt`` files of either stage
can be loaded too; they carry the model config in their hyper-parameters.
The data config of a run is the ``data`` section of ``<run>/.hydra/config.yaml``
(or of a bundle's ``manifest.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pwl.blocks import BlockNet
from pwl.build import build_hybrid, build_net, to_dict
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet

MODEL_YAML = "model.yaml"
TEACHER_FILE = "teacher.safetensors"
HYBRID_FILE = "hybrid.safetensors"
MANIFEST_FILE = "manifest.json"
RUN_CONFIG = ".hydra/config.yaml"


def save_weights(module: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None
                 ) -> Path:
    """Writes a module's state dict (parameters and buffers) as safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=dict(metadata or {}))
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "it is truncated or corrupt, re-create it") from None


def load_weights(module: nn.Module, path: str | Path, what: str) -> None:
    """Loads ``path`` into ``module``; a mismatch names the file and the expected model."""
    state = read_weights(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} of other shape (e.g. {k}: file "
                           f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)})")
        raise CheckpointError(f"{path} does not match the {what}: " + ", ".join(details))
    module.load_state_dict(state)


def save_model_cfg(cfg: Mapping[str, Any], run_dir: str | Path) -> Path:
    path = Path(run_dir) / MODEL_YAML
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def read_model_cfg(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; a run directory holds the model.yaml "
                              "its weights were trained with")
    return yaml.safe_load(path.read_text())


def describe(cfg: Mapping[str, Any]) -> str:
    """One line naming an architecture: its builder and its main arguments."""
    args = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "_target_")
    return f"{cfg.get('_target_', '?')}({args})"


def teacher_file(path: str | Path) -> Path:
    """The teacher weights file of a teacher run directory, or the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / TEACHER_FILE
    if not path.is_file():
        raise CheckpointError(f"teacher weights {path} do not exist; train a teacher with "
                              "`python -m pwl.train stage=teacher` and pass its run directory "
                              "as teacher=<dir>")
    return path


def load_teacher(path: str | Path, teacher_cfg: Mapping[str, Any]) -> BlockNet:
    """Builds the teacher of ``teacher_cfg`` and loads the weights at ``path``.

    ``path`` is a teacher run directory or its ``teacher.safetensors``.
    """
    file = teacher_file(path)
    teacher = build_net(teacher_cfg, "teacher")
    try:
        load_weights(teacher, file, f"expected teacher {describe(teacher_cfg)}")
    except CheckpointError as e:
        saved = file.parent / MODEL_YAML
        if saved.is_file():
            trained = read_model_cfg(saved).get("teacher", {})
            raise CheckpointError(f"{e}; it was trained as {describe(trained)}; use the same "
                                  "model config for distillation") from None
        raise
    return teacher


def load_hybrid(path: str | Path) -> tuple[HybridNet, dict[str, Any]]:
    """A trained HybridNet and its model config from a distill run dir, file or checkpoint."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        from pwl.runtime.bundle import load_bundle_hybrid
        return load_bundle_hybrid(path)
    if path.suffix == ".ckpt":
        return _hybrid_from_ckpt(path)
    weights = path / HYBRID_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{weights} does not exist; pass a distill run directory "
                              f"(holding {HYBRID_FILE} and {MODEL_YAML}), a Lightning .ckpt "
                              "or a bundle directory")
    cfg = read_model_cfg(weights.parent / MODEL_YAML)
    hybrid = build_hybrid(cfg)
    load_weights(hybrid, weights, f"model {cfg.get('name', '')} in {weights.parent / MODEL_YAML}")
    return hybrid.eval(), cfg


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint: a directory itself, else the file's run.

    ``<run>/checkpoints/last.ckpt`` and ``<run>/hybrid.safetensors`` both give ``<run>``.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return checkpoint
    parent = checkpoint.parent
    return parent.parent if parent.name == "checkpoints" else parent


def saved_data_cfg(checkpoint: str | Path, *, fix: str
                   ) -> tuple[dict[str, Any] | None, Path | None]:
    """The data config a model was trained with, and the file holding it, if the run saved one.

    Args:
        checkpoint: a run directory, a file in it (weights, ``.ckpt``) or a bundle directory.
        fix: how to do without the saved config; ends the error when it does not resolve.

    Returns:
        the resolved ``data`` section of the bundle manifest or of ``<run>/.hydra/config.yaml``
        and that file's path; ``(None, None)`` when there is none.
    """
    run = run_dir_of(checkpoint)
    if (run / MANIFEST_FILE).is_file():
        from pwl.runtime.bundle import read_manifest
        data = read_manifest(run).get("data")
        return (data, run / MANIFEST_FILE) if data else (None, None)
    path = run / RUN_CONFIG
    if not path.is_file():
        return None, None
    try:
        node = OmegaConf.load(path).get("data")
        data = OmegaConf.to_container(node, resolve=True) if node is not None else None
    except OmegaConfBaseException as e:
        raise ConfigError(f"the data section of {path} does not resolve "
                          f"({str(e).splitlines()[0]}); {fix}") from None
    return (data, path) if data else (None, None)


def _hybrid_from_ckpt(path: Path) -> tuple[HybridNet, dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip and I/O errors all mean an unusable file
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); "
                              "it is truncated or corrupt") from None
    cfg = ckpt.get("hyper_parameters", {}).get("model_cfg")
    if cfg is None:
        raise CheckpointError(f"{path} has no model_cfg hyper-parameter; is it a pwl "
                              "distill checkpoint?")
    hybrid = build_hybrid(cfg)
    state = {k.removeprefix("hybrid."): v for k, v in ckpt["state_dict"].items()
             if k.startswith("hybrid.")}
    result = hybrid.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path} does not match its model config: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return hybrid.eval(), cfg
