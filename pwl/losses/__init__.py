"""Composable loss plugins for distillation with progressive weight loading.

``build_loss(cfg.loss.terms)`` returns a ``WeightedSum`` of named plugins; each
plugin reads one step's ``DistillOutputs`` and returns a scalar.
"""

from pwl.losses.base import DistillOutputs, LossTerm
from pwl.losses.compose import PLUGINS, WeightedSum, build_loss, build_term
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
    "PLUGINS",
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
]
