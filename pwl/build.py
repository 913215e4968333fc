"""Builds models and data modules from configs.

A model config (``conf/model/*.yaml``) holds ``teacher`` and ``student`` (each
a ``_target_`` builder), ``adapter`` (the adapter kind) and ``input_shape``
([C, H, W]). It is saved with every run so the models can be rebuilt later.
A data config (``conf/data/*.yaml``) builds an ``ImageDataModule``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.config import instantiate_as
from pwl.data.datamodule import ImageDataModule
from pwl.errors import ConfigError
from pwl.hybrid import HybridNet

REQUIRED = ("teacher", "student", "input_shape")


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


def build_datamodule(data_cfg: Mapping[str, Any], **overrides: Any) -> ImageDataModule:
    """Instantiates ``data_cfg`` (with ``overrides`` replacing its keys) and sets it up.

    Raises:
        ConfigError: the config does not build an ImageDataModule (the error names ``data``);
            a PWLError raised by the data module itself is passed on as it is.
    """
    dm = instantiate_as({**data_cfg, **overrides}, "data")
    if not isinstance(dm, ImageDataModule):
        raise ConfigError(f"data._target_={data_cfg.get('_target_')} is not an ImageDataModule")
    dm.setup()
    return dm
