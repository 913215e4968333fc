"""Model files of a run directory: safetensors weights and the ``model.yaml`` they were built from.

A teacher run writes ``teacher.safetensors`` and ``model.yaml`` (the resolved
model config); a distill run writes ``hybrid.safetensors`` (teacher, student
and adapters) and ``model.yaml``. Training reads a teacher back with
``load_teacher``; nothing here knows about bundles.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from pwl.atomic import atomic_write_bytes
from pwl.blocks import BlockNet
from pwl.build import build_net
from pwl.config import to_dict
from pwl.errors import CheckpointError

MODEL_YAML = "model.yaml"
TEACHER_FILE = "teacher.safetensors"
HYBRID_FILE = "hybrid.safetensors"


def save_weights(module: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None
                 ) -> Path:
    """Writes a module's state dict (parameters and buffers) as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata=dict(metadata or {})))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "it is truncated or corrupt, re-create it") from None


def load_weights(module: nn.Module, path: str | Path, what: str,
                 prefix: str = "") -> None:
    """Loads ``path`` (its tensors under ``prefix``) into ``module``; a mismatch names the file
    and the expected model."""
    state = {k.removeprefix(prefix): v for k, v in read_weights(path).items()
             if k.startswith(prefix)}
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
    return atomic_write_bytes(Path(run_dir) / MODEL_YAML,
                              yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())


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
                              "`python -m pwl.train phase=teacher` and pass its run directory "
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


def load_student(hybrid: nn.Module, path: str | Path) -> None:
    """Loads the student of a finished distill run (its directory or ``hybrid.safetensors``)
    into ``hybrid.student``; the run's teacher and adapters are not used."""
    file = Path(path) / HYBRID_FILE if Path(path).is_dir() else Path(path)
    load_weights(hybrid.student, file, "student of this model config (student_from= must be "
                 "a distill run of the same pair)", prefix="student.")
