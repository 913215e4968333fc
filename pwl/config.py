"""Hydra helpers shared by every layer: plain dicts of configs, instantiation with clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pwl.errors import ConfigError, PWLError


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
