"""Hydra helpers shared by every layer: plain dicts of configs, instantiation with clear errors,
and the base of the config schemas (pydantic) with one-line errors naming the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError

from pwl.errors import ConfigError, PWLError

S = TypeVar("S", bound="Schema")


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


class Schema(BaseModel):
    """Base of the config schemas: typed, strict, finite, unknown keys refused.

    Strict so that ``"3"`` or ``true`` is not taken for a number, and finite so
    that NaN and infinity (which JSON readers accept) never reach a model.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class OpenSchema(Schema):
    """A schema that checks the keys it names and lets others through (a user's own knobs)."""

    model_config = ConfigDict(extra="allow")


def _short(value: Any) -> str:
    text = str(value) if isinstance(value, (int, float)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(error: Mapping[str, Any], key: str) -> str:
    """One pydantic error as ``<key.path>=<value> <what is wrong>``."""
    path = ".".join([key, *(str(p) for p in error["loc"])]) if key else ".".join(
        str(p) for p in error["loc"])
    kind, ctx = error["type"], error.get("ctx", {})
    msg = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and not error["loc"]:
        # a check across fields: its message names them, the whole value would be noise
        return f"{path}: {msg}"
    if kind == "value_error" and msg.startswith(f"{error['loc'][-1]}="):
        # the validator's own error already says "<key>=<value> ..."
        return path.rpartition(".")[0] + "." * ("." in path) + msg
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}
    if kind == "missing":
        return f"{path} is missing"
    if kind == "extra_forbidden":
        return f"{path} is not a known key"
    if kind in bounds:
        limit = next(iter(ctx.values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        what = f"must be {bounds[kind]} {limit}"
    elif kind == "finite_number":
        what = "must be a finite number"
    elif kind == "literal_error":
        what = f"must be one of {ctx['expected']}"
    else:
        what = msg[0].lower() + msg[1:]
    return f"{path}={_short(error['input'])} {what}"


def problems_of(error: ValidationError, key: str) -> list[str]:
    """Every problem a validation found, one line each, keys prefixed with ``key``."""
    return [_problem(e, key) for e in error.errors()]


def check(schema: type[S], data: Any, key: str, fix: str = "") -> S:
    """``data`` validated by ``schema``.

    Args:
        schema: a ``Schema`` subclass.
        data: the config (a mapping of plain values).
        key: where ``data`` sits in the config (``"optim"``, ``"model.teacher"``); errors
            name ``<key>.<field>``.
        fix: how to fix a wrong value; appended to the error.

    Raises:
        ConfigError: one line naming the first wrong key (and how many more there are).
    """
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        found = problems_of(e, key)
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(f"{found[0]}{more}" + (f"; {fix}" if fix else "")) from None


# Bytes per second of each unit a bandwidth may be written in.
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "kbit": 125, "mbit": 125e3, "gbit": 125e6}


def parse_bandwidth(value: float | int | str | None, key: str = "bandwidth") -> float | None:
    """Bytes per second from a number or a string such as ``"50MB"``, ``"400Mbit"``, ``"8MiB"``.

    ``None``, ``0`` and ``"none"`` mean no limit.
    """
    if value is None or value == 0 or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*?)(?:/s)?\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ConfigError(f"{key}={value!r} is not a rate; give bytes per second as a number "
                              "or with a unit: 50MB, 400Mbit, 8MiB")
        try:
            rate = float(m.group(1)) * _UNITS[unit]
        except ValueError:
            raise ConfigError(f"{key}={value!r}: {m.group(1)!r} is not a number") from None
    if rate <= 0:
        raise ConfigError(f"{key}={value!r} must be positive (or null for no limit)")
    return rate
