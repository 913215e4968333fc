"""Loading plans: the order of teacher blocks with the most accuracy per byte loaded.

A loading order goes from the student (``S...S``) to the teacher (``T...T``),
adding one teacher block per step. While block ``b_j`` (``w_j`` bytes) arrives,
the app answers with the previous mask ``m_{j-1}``, so the area under accuracy
vs bytes loaded is::

    area = sum_j accuracy(m_{j-1}) * w_j        (j = 1..N; m_0 = S^N)

and ``area / sum_j w_j`` is the mean accuracy over the load. The teacher's own
accuracy never enters: once it holds, loading is over. ``best_order`` finds the
order of largest area exactly by dynamic programming over sets of loaded blocks
(O(2^N * N)); ``area`` scores any order.

The table may hold any stage metric (``pwl.stages.metrics``); ``best_order`` takes
its direction, so a language model's plan has the least area under bits per
character (lower is better).

``plan.csv`` (one writer and one reader here, ``write_plan`` and
``read_plan_rows``) holds the plan next to the orders it is compared with, one
row per (order, step)::

    order,step,mask,block,block_bytes,bytes_loaded,accuracy,mean_accuracy[,bpc,mean_bpc]

A language model's plan adds ``bpc`` and ``mean_bpc``, the metric it was chosen on.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pwl.atomic import write_dataclass_csv
from pwl.errors import CheckpointError, ConfigError
from pwl.masks import PLAN, LoadingOrder, bytes_loaded, validate_mask
from pwl.stages.metrics import ACCURACY, BPC, StageMetric

MAX_PLAN_BLOCKS = 20


def area(order: object, accuracy: Mapping[str, float], block_bytes: Sequence[int]) -> float:
    """Area under accuracy vs bytes of a loading order (accuracy x bytes).

    Args:
        order: a loadable order (``LoadingOrder.parse``: a name, block indices, masks);
            a partial order scores the steps it has.
        accuracy: accuracy per mask; every mask but the last must be there.
        block_bytes: bytes of each teacher block, block 0 first.
    """
    order = LoadingOrder.parse(order, len(block_bytes))
    total = 0.0
    for prev, block in zip(order.masks, order.blocks):
        if prev not in accuracy:
            raise ConfigError(f"the accuracy table has no mask {prev!r}, which the order "
                              "passes through; evaluate it (pwl.evaluate orders=[all])")
        total += accuracy[prev] * block_bytes[block]
    return total


def best_order(accuracy: Mapping[str, float], block_bytes: Sequence[int],
               metric: StageMetric = ACCURACY) -> tuple[LoadingOrder, float]:
    """The loading order of best ``area`` over the masks in ``accuracy``, exactly: the
    largest, or the smallest for a metric where lower is better (bits per character).

    best[S] is the largest area of any order that has loaded the set S of blocks:
    best[S] = max over b in S of best[S - b] + accuracy(S - b) * bytes[b]. Masks
    missing from ``accuracy`` are never passed through (all-teacher needs none).
    Ties go to the order that loads lower blocks first, so a flat table gives prefix.

    Args:
        accuracy: ``metric`` per mask (a table of every mask, or of the masks to choose from).
        block_bytes: bytes of each teacher block, block 0 first; N = its length <= 20.
        metric: what the table holds; its direction decides the best area.

    Returns:
        (the ``plan`` order, from all-student to all-teacher, its area).
    """
    n = len(block_bytes)
    if n > MAX_PLAN_BLOCKS:
        raise ConfigError(f"a plan is searched over 2^N block sets, for N <= {MAX_PLAN_BLOCKS}; "
                          f"the model has N={n}")
    size = 1 << n
    # Bit i of a state is block i; mask string position i is block i.
    acc = np.full(size, np.nan)
    for mask, value in accuracy.items():
        validate_mask(mask, n)
        acc[int(mask[::-1].replace("S", "0").replace("T", "1"), 2)] = metric.score(float(value))
    weights = np.asarray(block_bytes, dtype=np.float64)
    best = np.full(size, -np.inf)
    best[0] = 0.0 if not np.isnan(acc[0]) else -np.inf
    last = np.full(size, -1, dtype=np.int64)
    states = np.arange(size)
    popcount = np.zeros(size, dtype=np.int64)
    for i in range(n):
        popcount += (states >> i) & 1
    for k in range(1, n + 1):
        layer = states[popcount == k]
        candidates = np.full((n, len(layer)), -np.inf)
        for b in range(n):
            has = (layer >> b) & 1 == 1
            prev = layer[has] ^ (1 << b)
            held = acc[prev]
            ok = ~np.isnan(held)
            score = np.full(len(prev), -np.inf)
            score[ok] = best[prev[ok]] + held[ok] * weights[b]
            candidates[b, has] = score
        # The last block added wins ties from the highest index, so earlier steps load
        # lower blocks first.
        pick = n - 1 - np.argmax(candidates[::-1], axis=0)
        best[layer] = candidates[pick, np.arange(len(layer))]
        last[layer] = pick
    full = size - 1
    if not np.isfinite(best[full]):
        raise ConfigError("the accuracy table holds no loading order from all-student to "
                          "all-teacher; evaluate every mask (pwl.evaluate orders=[all])")
    blocks, state = [], full
    while state:
        b = int(last[state])
        blocks.append(b)
        state ^= 1 << b
    return (LoadingOrder(PLAN, LoadingOrder.parse(blocks[::-1], n).masks),
            metric.score(float(best[full])))


@dataclass
class PlanRow:
    """One row of ``plan.csv``: a step of one loading order.

    ``block`` is the teacher block added at this step (-1 at step 0), ``bytes_loaded``
    the teacher bytes loaded once it is in, ``mean_accuracy`` the order's area over
    its total bytes (the same on each of its rows). ``bpc`` and ``mean_bpc`` likewise for a
    language model (None for a classifier).
    """

    order: str
    step: int
    mask: str
    block: int
    block_bytes: int
    bytes_loaded: int
    accuracy: float
    mean_accuracy: float
    bpc: float | None = None
    mean_bpc: float | None = None

    def value(self, metric: StageMetric) -> float:
        return self.bpc if metric == BPC else self.accuracy

    def mean(self, metric: StageMetric) -> float:
        return self.mean_bpc if metric == BPC else self.mean_accuracy


PLAN_COLUMNS = tuple(f.name for f in fields(PlanRow) if f.name not in ("bpc", "mean_bpc"))
LM_PLAN_COLUMNS = (*PLAN_COLUMNS, "bpc", "mean_bpc")


def plan_metric(rows: Sequence[PlanRow]) -> StageMetric:
    """The metric a plan was chosen on: bits per character where its rows hold it."""
    return BPC if any(r.bpc is not None for r in rows) else ACCURACY


def plan_rows(order: LoadingOrder, accuracy: Mapping[str, float],
              block_bytes: Sequence[int],
              bpc: Mapping[str, float] | None = None) -> list[PlanRow]:
    """The rows of one loading order (all-student first) for ``plan.csv``; ``bpc`` per mask
    for a language model."""
    mean = area(order, accuracy, block_bytes) / sum(block_bytes)
    mean_bpc = area(order, bpc, block_bytes) / sum(block_bytes) if bpc is not None else None
    return [PlanRow(order.name, step, mask, block, block_bytes[block] if block >= 0 else 0,
                    bytes_loaded(mask, block_bytes), float(accuracy.get(mask, float("nan"))),
                    mean, float(bpc.get(mask, float("nan"))) if bpc is not None else None,
                    mean_bpc)
            for step, (mask, block) in enumerate(zip(order.masks, [-1, *order.blocks]))]


def write_plan(rows: Sequence[PlanRow], path: str | Path) -> Path:
    """Writes ``plan.csv`` (atomically)."""
    if plan_metric(rows) == BPC:
        return write_dataclass_csv(rows, PlanRow, path, LM_PLAN_COLUMNS)
    return write_dataclass_csv([PlanRow(**{k: getattr(r, k) for k in PLAN_COLUMNS})
                                for r in rows], PlanRow, path, PLAN_COLUMNS)


def read_plan_rows(path: str | Path) -> list[PlanRow]:
    """The rows of a ``plan.csv`` with their types restored.

    Raises:
        CheckpointError: the file is missing or not a plan CSV (names it).
    """
    path = Path(path)
    types = {f.name: {"int": int, "float": float, "str": str, "float | None": float}[f.type]
             for f in fields(PlanRow)}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            if columns not in (list(PLAN_COLUMNS), list(LM_PLAN_COLUMNS)):
                raise CheckpointError(f"{path} is not a plan CSV (columns "
                                      f"{reader.fieldnames}); write it with pwl.plan")
            return [PlanRow(**{k: types[k](r[k]) for k in columns}) for r in reader]
    except OSError as e:
        raise CheckpointError(f"cannot read the loading plan {path}: {e}; run pwl.plan "
                              "first") from None
    except ValueError as e:
        raise CheckpointError(f"{path} has a malformed row ({e}); re-create it with "
                              "pwl.plan") from None


def read_plan(path: str | Path, order: str = PLAN) -> LoadingOrder:
    """The order named ``order`` (the plan by default) in a ``plan.csv``.

    Raises:
        CheckpointError: the file is missing, not a plan CSV or lacks the order (names it).
    """
    steps = sorted((r.step, r.mask) for r in read_plan_rows(path) if r.order == order)
    if not steps:
        raise CheckpointError(f"{path} has no rows of order {order!r}; re-create it with "
                              "pwl.plan")
    masks = [mask for _, mask in steps]
    return LoadingOrder(order, LoadingOrder.parse(masks, len(masks[0])).masks)


def plot_plan(rows: Sequence[PlanRow], path: str | Path, title: str = "") -> Path:
    """The plan's metric (accuracy, or bits per character) vs MB loaded, one step line per
    order, the plan drawn thick.

    Each order holds its metric while the next block arrives, so its line is a
    staircase; the areas under the lines are the orders' scores.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display

    path = Path(path)
    metric = plan_metric(rows)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for order in dict.fromkeys(r.order for r in rows):
        steps = [r for r in rows if r.order == order]
        mb = [r.bytes_loaded / 1e6 for r in steps]
        values = [r.value(metric) for r in steps]
        is_plan = order == PLAN
        ax.step(mb, values, where="post", marker="o", markersize=3 if not is_plan else 5,
                linewidth=2.5 if is_plan else 1, zorder=3 if is_plan else 2,
                label=f"{order} (mean {steps[0].mean(metric):.4f}): "
                      + " ".join(str(r.block) for r in steps[1:]))
    ax.set_xlabel("teacher MB loaded")
    ax.set_ylabel(metric.label)
    ax.set_title(title or f"loading orders: {metric.label} while loading")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path
