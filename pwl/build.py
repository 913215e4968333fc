"""Builds models from configs (data modules: ``pwl.data.registry.build_datamodule``).

A model config (``conf/model/*.yaml``) holds ``teacher`` and ``student`` (each
a ``_target_`` builder), ``adapter`` (the adapter kind) and ``input_shape``
([C, H, W], or [L] for a language model). It is saved with every run so the models
can be rebuilt later.

The user's own config keeps Hydra's full ``_target_`` power (``build_net``,
``build_hybrid``). A config that arrived with a file (a bundle, a run directory,
a checkpoint) is data: ``check_saved_model_cfg`` and ``build_saved_hybrid``
accept only registered builders with valid arguments, and call them directly:
nothing the file names is imported.

The bundle runtime imports this module, so it imports no data or training code
(Lightning, the data modules): an app that only opens bundles does not load them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pwl.adapters import KINDS, Adapters
from pwl.blocks import BlockNet
from pwl.config import Schema, check, instantiate_as
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet
from pwl.models import build_saved_net, check_saved_net
from pwl.models.gpt import MAX_CONTEXT
from pwl.models.registry import MAX_IMAGE, MAX_WIDTH

REQUIRED = ("teacher", "student", "input_shape")


class SavedModelCfg(Schema):
    """The top level of a saved model config; ``teacher``/``student`` are checked per builder."""

    name: str | None = Field(None, max_length=200)
    adapter: str = "linear"
    input_shape: list[int] = Field(min_length=1, max_length=3)
    teacher: dict[str, Any]
    student: dict[str, Any]

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"is not an adapter kind; use one of {list(KINDS)}")
        return kind

    @field_validator("input_shape")
    @classmethod
    def _sane_shape(cls, shape: list[int]) -> list[int]:
        # The adapters are sized by running both nets on one input of this shape.
        if len(shape) == 1:
            if not 1 <= shape[0] <= MAX_CONTEXT:
                raise ValueError(f"must be [L] (a language model's context) with "
                                 f"1 <= L <= {MAX_CONTEXT}")
            return shape
        if len(shape) != 3 or not (1 <= shape[0] <= MAX_WIDTH
                                   and all(1 <= s <= MAX_IMAGE for s in shape[1:])):
            raise ValueError(f"must be [C, H, W] with 1 <= C <= {MAX_WIDTH} and "
                             f"1 <= H, W <= {MAX_IMAGE}, or [L] for a language model")
        return shape


def check_saved_model_cfg(cfg: Any, source: str | Path) -> dict[str, Any]:
    """Validates a model config read from ``source`` against the registered builders.

    Returns:
        the config as it is (a plain dict).

    Raises:
        CheckpointError: one line naming ``source`` and the first wrong key (``model.teacher...``).
    """
    try:
        check(SavedModelCfg, cfg, "model",
              "the saved model config is damaged or not from this pwl; re-create it")
        for role in ("teacher", "student"):
            check_saved_net(cfg[role], f"model.{role}")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return dict(cfg)


def build_saved_net_of(cfg: Mapping[str, Any], role: str, source: str | Path) -> BlockNet:
    """Builds ``model.<role>`` of a saved config (read from ``source``) by its registered builder."""
    try:
        return build_saved_net(cfg, f"model.{role}")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def build_saved_hybrid(cfg: Any, source: str | Path) -> HybridNet:
    """``build_hybrid`` for a model config read from ``source``: validated, nothing imported."""
    cfg = check_saved_model_cfg(cfg, source)
    teacher = build_saved_net_of(cfg["teacher"], "teacher", source)
    student = build_saved_net_of(cfg["student"], "student", source)
    return _pair(cfg, teacher, student)


def build_net(cfg: Mapping[str, Any], role: str) -> BlockNet:
    """Instantiates the ``_target_`` builder of ``cfg`` (``role`` names it in errors)."""
    if "_target_" not in cfg:
        raise ConfigError(f"model.{role} has no _target_; name a builder such as "
                          "pwl.models.resnet")
    net = instantiate_as(cfg, f"model.{role}")
    if not isinstance(net, BlockNet):
        raise ConfigError(f"model.{role}._target_={cfg['_target_']} built a "
                          f"{type(net).__name__}, not a BlockNet")
    return net


def check_model_cfg(cfg: Mapping[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ConfigError(f"model config lacks {missing}; see conf/model/resnet.yaml")


def build_teacher(cfg: Mapping[str, Any]) -> BlockNet:
    check_model_cfg(cfg)
    return build_net(cfg["teacher"], "teacher")


def build_hybrid(cfg: Mapping[str, Any], teacher: BlockNet | None = None) -> HybridNet:
    """Teacher (built, or given), student and probed adapters as one HybridNet."""
    check_model_cfg(cfg)
    teacher = teacher if teacher is not None else build_net(cfg["teacher"], "teacher")
    return _pair(cfg, teacher, build_net(cfg["student"], "student"))


def _pair(cfg: Mapping[str, Any], teacher: BlockNet, student: BlockNet) -> HybridNet:
    """Teacher and student with adapters probed on one image of ``cfg["input_shape"]``."""
    if teacher.num_blocks != student.num_blocks:
        raise ConfigError(f"teacher has N={teacher.num_blocks} blocks but student has "
                          f"N={student.num_blocks}; configure model.teacher and model.student "
                          "with the same number of blocks")
    adapters = Adapters.between(teacher, student, tuple(cfg["input_shape"]),
                                cfg.get("adapter", "linear"))
    return HybridNet(teacher, student, adapters)
