"""A weighted sum of named loss plugins, built from ``cfg.loss.terms``.

``conf/loss/pwl.yaml`` shows the config: ``terms`` maps a term name to its
``weight``, an optional ``plugin`` (defaults to the name, so one plugin can be
used twice under two names) and the plugin's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pwl.errors import ConfigError
from pwl.hybrid import HybridNet
from pwl.losses.base import LOSSES, DistillOutputs, LossTerm


class WeightedSum(nn.Module):
    """``loss = sum_name weight * term(outputs)``; terms of weight 0 are not computed.

    Args:
        terms: name -> plugin.
        weights: name -> weight (>= 0), one per term.
    """

    def __init__(self, terms: Mapping[str, LossTerm], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(terms) != set(weights):
            raise ConfigError(f"loss terms {sorted(terms)} and weights {sorted(weights)} differ")
        if not any(weights.values()):
            raise ConfigError("loss.terms: no term has a non-zero weight; give at least one "
                              "term a weight, e.g. loss.terms.ce.weight=1.0")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float(w) for name, w in weights.items()}

    @property
    def active(self) -> list[str]:
        """Names of the terms that are computed (non-zero weight), in config order."""
        return [name for name in self.terms if self.weights[name] != 0]

    def forward(self, outputs: DistillOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the weighted total (with grad) and each active term's unweighted value
        (detached, for logging as ``train/loss/<name>``)."""
        total = None
        values = {}
        for name in self.active:
            value = self.terms[name](outputs)
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
            values[name] = value.detach()
        return total, values

    def describe(self, hybrid: HybridNet | None = None) -> str:
        """The formula of the active terms with their weights, e.g.
        ``loss = 0.4*ce[CE] + 0.6*kd[KL(T=2)]``; ``hybrid`` lets terms say what drops out."""
        parts = [f"{self.weights[n]}*{n}[{self.terms[n].describe(hybrid)}]" for n in self.active]
        return "loss = " + " + ".join(parts)

    def __str__(self) -> str:
        return self.describe()


def _term_kwargs(plugin: type[LossTerm]) -> list[str]:
    return list(inspect.signature(plugin).parameters)


def build_term(name: str, entry: Any) -> tuple[LossTerm, float]:
    """One term of ``loss.terms``: ``{weight, plugin?, **plugin kwargs}`` -> (plugin, weight)."""
    where = f"loss.terms.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a mapping such as {{weight: 1.0}}, got {entry!r}")
    kwargs = dict(entry)
    if "weight" not in kwargs:
        raise ConfigError(f"{where} has no weight; set {where}.weight (0 turns it off)")
    weight = kwargs.pop("weight")
    plugin_name = kwargs.pop("plugin", name)
    plugin = LOSSES.get(plugin_name, f"{where}.plugin").obj
    accepted = _term_kwargs(plugin)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for plugin {plugin_name!r}; "
                          f"it accepts {['weight', 'plugin', *accepted]}")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ConfigError(f"{where}.weight={weight!r} must be a number >= 0")
    try:
        term = plugin(**kwargs)
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"{where}: {e}") from None
    return term, float(weight)


def build_loss(terms_cfg: Mapping[str, Any] | DictConfig) -> WeightedSum:
    """The weighted sum of ``cfg.loss.terms`` (a mapping: name -> {weight, plugin?, ...})."""
    if isinstance(terms_cfg, DictConfig):
        terms_cfg = OmegaConf.to_container(terms_cfg, resolve=True)
    if not isinstance(terms_cfg, Mapping) or not terms_cfg:
        raise ConfigError("loss.terms must be a non-empty mapping name -> {weight, ...}; "
                          "see conf/loss/pwl.yaml")
    terms, weights = {}, {}
    for name, entry in terms_cfg.items():
        terms[name], weights[name] = build_term(str(name), entry)
    return WeightedSum(terms, weights)
