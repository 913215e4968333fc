"""The stage metric of a task: its name, its direction, and how a batch is scored.

The one place that decides what a stage is measured by. Classifiers: ``accuracy``
(higher is better). Language models: ``bpc``, bits per character, the mean
cross-entropy of the next character in bits (lower is better), with ``accuracy``
the next-character accuracy beside it. Stage files, the StageEval callback, the
report, the planner and the load curves take the metric and its direction from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pwl.errors import ConfigError


@dataclass(frozen=True)
class StageMetric:
    """A stage metric.

    Attributes:
        name: its column in ``stages.csv`` (``accuracy``, ``bpc``).
        higher_is_better: its direction.
        label: how plots and tables name it.
    """

    name: str
    higher_is_better: bool
    label: str

    @property
    def direction(self) -> str:
        """``max`` or ``min``: what a checkpoint callback or a planner seeks."""
        return "max" if self.higher_is_better else "min"

    def score(self, value: float) -> float:
        """``value`` signed so that larger is better (what planners maximise)."""
        return value if self.higher_is_better else -value

    def best(self, values: Mapping[str, float]) -> str:
        """The key of the best value."""
        return max(values, key=lambda k: self.score(values[k]))


ACCURACY = StageMetric("accuracy", True, "accuracy")
BPC = StageMetric("bpc", False, "bits per character")
METRICS = {m.name: m for m in (ACCURACY, BPC)}
TASK_METRICS = {"classification": ACCURACY, "language_model": BPC}


def metric_for_task(task: str) -> StageMetric:
    """The headline stage metric of ``task`` (a ``BlockNet.task``)."""
    if task not in TASK_METRICS:
        raise ConfigError(f"task={task!r} has no stage metric; use one of {list(TASK_METRICS)}")
    return TASK_METRICS[task]


def metric_named(name: str | None) -> StageMetric:
    """The metric a stage file names (``stages.json``'s ``metric``); None: accuracy, the
    only metric of files written before metrics had names."""
    if name is None:
        return ACCURACY
    if name not in METRICS:
        raise ConfigError(f"stage metric {name!r} is unknown; use one of {list(METRICS)}")
    return METRICS[name]


def metric_of(net: Any) -> StageMetric:
    """The headline metric of a BlockNet or a HybridNet (its student's task)."""
    student = getattr(net, "student", net)
    return metric_for_task(getattr(student, "task", "classification"))


@torch.no_grad()
def batch_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct predictions and summed cross-entropy in nats (float64) of one batch.

    Args:
        logits: (B, C), or a language model's (B, L, V).
        labels: (B,), or the next tokens (B, L).

    Returns:
        per-prediction hits (B,) or (B*L,) bool, and the cross-entropy summed over them.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    targets = labels.reshape(-1)
    hits = flat.argmax(dim=1) == targets
    nll = F.cross_entropy(flat.float(), targets, reduction="sum").double()
    return hits, nll


def bits(nats: float, count: int) -> float:
    """Mean bits per prediction from a cross-entropy sum in nats over ``count`` predictions."""
    return nats / count / math.log(2)
