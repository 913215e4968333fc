"""Builds teacher, student, adapters and the hybrid from a model config.

A model config (``conf/model/*.yaml``) holds ``teacher`` and ``student`` (each
a ``_target_`` builder), ``adapter`` (the adapter kind) and ``input_shape``
([C, H, W]). It is saved with every run so the models can be rebuilt later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.errors import ConfigError, PWLError
from pwl.hybrid import HybridNet

REQUIRED = ("teacher", "student", "input_shape")


def to_dict(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A plain, resolved dict of a (possibly OmegaConf) config."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def instantiate_as(cfg: Mapping[str, Any], key: str) -> Any:
    """Instantiates a ``_target_`` config; failures become errors naming config ``key``.

    A PWLError raised by the built object itself (a bad width, a missing file) is
    passed on as it is.
    """
    try:
        return hydra.utils.instantiate(cfg, _convert_="all")
    except hydra.errors.InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, PWLError):
            raise cause from None
        raise ConfigError(f"{key}: {cause}") from None


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
    student = build_net(cfg["student"], "student")
    if teacher.num_blocks != student.num_blocks:
        raise ConfigError(f"teacher has N={teacher.num_blocks} blocks but student has "
                          f"N={student.num_blocks}; configure model.teacher and model.student "
                          "with the same number of blocks")
    adapters = Adapters.between(teacher, student, tuple(cfg["input_shape"]),
                                cfg.get("adapter", "linear"))
    return HybridNet(teacher, student, adapters)
