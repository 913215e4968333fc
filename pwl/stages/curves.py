"""Accuracy over time while a bundle loads: the curve, its area, its monotonicity.

A load is a list of stages, each the time its mask became active (seconds since
open, from ``ProgressiveModel``'s events) and that mask's accuracy (the stage
accuracies of the bundle's manifest, measured with its stored weights). The app
gives no answer before the first one, so the accuracy is 0 until then; from
there it holds each stage's accuracy until the next stage is active, and the
last one's after the load::

    acc(t) = 0                  t < first answer
           = accuracy(m_j)      t_j <= t < t_{j+1}   (t_j no earlier than the first answer)

The normalised area over a window [0, W] is the mean accuracy the app gave in
it, ``integral of acc(t) dt over [0, W] / W``. Over the loading window (W = the
time the last stage became active) it scores one load; over a fixed window (such
as the time the fp32 teacher alone needs to load at the same bandwidth) it
compares loads of different lengths.

A language model's curve holds bits per character (lower is better; pass
``metric=BPC``): the time to the teacher is then the first stage at or below the
teacher's, and its areas count only from the first answer (there is no bits-per-
character value of "no answer"), normalised over the window after it.

Monotonicity is the share of inputs a stage's mask gets right and the next
one's gets wrong (``StageEvaluator`` counts it with ``flip_pairs``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pwl.errors import ConfigError
from pwl.stages.metrics import ACCURACY, StageMetric


@dataclass(frozen=True)
class LoadCurve:
    """The accuracy-over-time curve of one load and its summary.

    Attributes:
        stages: (t, mask, accuracy) per stage, t when the mask began to answer
            (no earlier than the first answer).
        first_answer_s: time to the first answer.
        loaded_s: time the last stage became active (the end of the loading window).
        time_to_teacher_s: first time the accuracy in use reached that of the
            all-teacher mask (None if the curve never does, or has no all-teacher mask).
        mean_accuracy_load: normalised area over the loading window [0, loaded_s].
        window_s: the fixed window (None if none was given).
        mean_accuracy_window: normalised area over [0, window_s] (None without a window).
    """

    stages: list[tuple[float, str, float]]
    first_answer_s: float
    loaded_s: float
    time_to_teacher_s: float | None
    mean_accuracy_load: float
    window_s: float | None
    mean_accuracy_window: float | None


def _area(stages: Sequence[tuple[float, str, float]], until: float) -> float:
    """Integral of the step curve ``stages`` over [0, until] (accuracy x seconds)."""
    total = 0.0
    for (t, _, acc), nxt in zip(stages, [*(s[0] for s in stages[1:]), float("inf")]):
        total += acc * max(0.0, min(nxt, until) - t)
    return total


def mean_accuracy(stages: Sequence[tuple[float, str, float]], window_s: float) -> float:
    """The normalised area of the step curve ``stages`` over [0, window_s]."""
    if window_s <= 0:
        raise ConfigError(f"a window of {window_s} s has no area; it must be > 0")
    return _area(stages, window_s) / window_s


def load_curve(events: Sequence[tuple[float, str]], accuracy: Mapping[str, float],
               first_answer_s: float | None = None, window_s: float | None = None,
               metric: StageMetric = ACCURACY) -> LoadCurve:
    """The curve and summary of a load.

    Args:
        events: (t, mask) per stage in the order they became active, the student first
            (``LoadEvent.t`` and ``.mask`` of the events without an error).
        accuracy: accuracy per mask (the manifest's stage accuracies).
        first_answer_s: when the first answer came; None: at the first event.
        window_s: a fixed window for ``mean_accuracy_window``.
        metric: what ``accuracy`` holds (``pwl.stages.metrics``; see the module docstring).

    Raises:
        ConfigError: an event's mask has no accuracy (naming it), or no events.
    """
    if not events:
        raise ConfigError("a load curve needs at least the student's event")
    missing = [mask for _, mask in events if mask not in accuracy]
    if missing:
        raise ConfigError(f"no stage accuracy for mask {missing[0]!r}, which the load passes "
                          "through; export the bundle with stage accuracies for every mask of "
                          "its orders (pwl.evaluate orders=[...], then pwl.export)")
    start = events[0][0] if first_answer_s is None else first_answer_s
    stages = [(max(t, start), mask, float(accuracy[mask])) for t, mask in events]
    loaded = stages[-1][0]
    teacher = accuracy.get("T" * len(events[0][1]))
    reached = (None if teacher is None else
               next((t for t, _, acc in stages if metric.score(acc) >= metric.score(teacher)),
                    None))
    if metric.higher_is_better:
        def mean(until: float) -> float:
            return mean_accuracy(stages, until)
        load = mean(loaded) if loaded > 0 else 0.0
    else:  # from the first answer on: "no answer" has no value to average
        shifted = [(t - start, mask, value) for t, mask, value in stages]

        def mean(until: float) -> float:
            return mean_accuracy(shifted, until - start)
        load = mean(loaded) if loaded > start else stages[-1][2]
    return LoadCurve(stages=stages, first_answer_s=start, loaded_s=loaded,
                     time_to_teacher_s=reached, mean_accuracy_load=load, window_s=window_s,
                     mean_accuracy_window=mean(window_s) if window_s is not None else None)


def consecutive_pairs(masks: Sequence[str]) -> list[tuple[str, str]]:
    """(mask, next mask) of a loading order: the swaps whose flips measure monotonicity."""
    return list(itertools.pairwise(masks))
