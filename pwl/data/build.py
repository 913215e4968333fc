"""Builds a set-up data module from a data config (``conf/data/*.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pwl.build import instantiate_as
from pwl.data.datamodule import ImageDataModule
from pwl.errors import ConfigError


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
