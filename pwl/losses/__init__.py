"""Composable loss plugins for distillation with progressive weight loading.

``build_loss(cfg.loss.terms)`` returns a ``WeightedSum`` of named plugins; each
plugin reads one step's ``DistillOutputs`` and returns a scalar. Plugins are registered
where they are defined (``@register_loss``); this package imports them all.
"""

from pwl.losses.base import LOSSES, DistillOutputs, LossTerm, register_loss
from pwl.losses.compose import WeightedSum, build_loss, build_term
from pwl.losses.cross_path import CrossPath
from pwl.losses.distances import DISTANCES, get_distance
from pwl.losses.terms import (
    CrossEntropy,
    FeatureRecon,
    FeatureSync,
    KnowledgeDistillation,
    kd_loss,
)

__all__ = [
    "DISTANCES",
    "LOSSES",
    "CrossEntropy",
    "CrossPath",
    "DistillOutputs",
    "FeatureRecon",
    "FeatureSync",
    "KnowledgeDistillation",
    "LossTerm",
    "WeightedSum",
    "build_loss",
    "build_term",
    "get_distance",
    "kd_loss",
    "register_loss",
]
