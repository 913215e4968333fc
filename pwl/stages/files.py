"""Stage results and their files: one writer and one typed reader of the **contract**
``stages.csv``.

An evaluation (``StageResult``) is one ``StageRow`` per (order, mask). One row per
(epoch, mask)::

    epoch,order,k,mask,accuracy,teacher_params,bytes_loaded,ms_per_batch[,bpc]

A language model's file adds ``bpc`` (bits per character, its headline metric;
``accuracy`` is then next-character accuracy); a classifier's has no ``bpc`` column.
``stages.json`` holds the same rows plus per-evaluation metadata and names the
headline ``metric`` and its direction (``higher_is_better``); ``stages.png`` plots
the last evaluation (the headline metric vs k, one line per order).
Everything that reads these files (export, report, reproduce) goes through
``read_stages``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pwl.atomic import atomic_write_text
from pwl.errors import CheckpointError
from pwl.masks import masks_for_order, order_key
from pwl.stages.metrics import ACCURACY, BPC, StageMetric, metric_named


@dataclass
class StageRow:
    """One row of ``stages.csv``: a mask evaluated at one epoch."""

    epoch: int
    order: str
    k: int
    mask: str
    accuracy: float
    teacher_params: int
    bytes_loaded: int
    ms_per_batch: float
    bpc: float | None = None

    def value(self, metric: StageMetric) -> float:
        """This row's value of ``metric``."""
        return getattr(self, metric.name)


# The contract's columns; a task's own metric columns follow them (see ``columns_of``).
COLUMNS = tuple(f.name for f in fields(StageRow) if f.name != "bpc")
METRIC_COLUMNS = ("bpc",)


def metric_of_rows(rows: Iterable[StageRow]) -> StageMetric:
    """The headline metric of rows: bits per character where they hold it, else accuracy."""
    return BPC if any(r.bpc is not None for r in rows) else ACCURACY


def columns_of(rows: Sequence[StageRow]) -> list[str]:
    """The columns the rows fill: the contract's, then ``bpc`` for a language model."""
    return [*COLUMNS, *(c for c in METRIC_COLUMNS
                        if any(getattr(r, c) is not None for r in rows))]


# Orders whose masks are named by k alone in scalar keys (one mask per k).
K_ORDERS = ("prefix", "suffix")


def prefix_auc(rows: Iterable[StageRow], num_blocks: int,
               metric: StageMetric = ACCURACY) -> float | None:
    """Mean ``metric`` over the prefix curve k=0..N (its area), or None if a point is missing.

    ``rows`` are one evaluation's rows; the prefix masks may come from any order. Its
    direction is the metric's (a language model's bpc area: lower is better).
    """
    value = {r.mask: r.value(metric) for r in rows}
    masks = masks_for_order("prefix", num_blocks)
    if not all(m in value for m in masks):
        return None
    return sum(value[m] for m in masks) / len(masks)


@dataclass
class StageResult:
    """One evaluation: its rows and how much work the shared prefixes saved.

    Attributes:
        rows: one per (order, mask), in order.
        num_blocks: N.
        batches: batches evaluated.
        samples: images evaluated.
        block_runs: blocks run, over all batches.
        naive_block_runs: blocks that one full forward per mask would have run.
        flips: per (mask a, mask b) pair asked for, the predictions that a gets right
            and b wrong.
        metric: the name of the headline metric (``pwl.stages.metrics``).

    Counts cover all processes when they were reduced; ``ms_per_batch`` is this process's.
    """

    rows: list[StageRow]
    num_blocks: int
    batches: int
    samples: int
    block_runs: int
    naive_block_runs: int
    flips: dict[tuple[str, str], int] = field(default_factory=dict)
    metric: str = ACCURACY.name

    @property
    def epoch(self) -> int:
        return self.rows[0].epoch

    @property
    def headline(self) -> StageMetric:
        return metric_named(self.metric)

    @property
    def prefix_auc(self) -> float | None:
        return prefix_auc(self.rows, self.num_blocks, self.headline)

    def accuracy(self, mask: str) -> float:
        return next(r.accuracy for r in self.rows if r.mask == mask)

    def value(self, mask: str) -> float:
        """The headline metric of ``mask``."""
        return next(r.value(self.headline) for r in self.rows if r.mask == mask)

    def flip_rate(self, before: str, after: str) -> float:
        """The share of images ``before`` classifies right and ``after`` wrong: how often
        swapping ``before`` for ``after`` breaks an answer (0 for a monotone step)."""
        return self.flips[(before, after)] / self.samples

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "num_blocks": self.num_blocks, "batches": self.batches,
                "samples": self.samples, "block_runs": self.block_runs,
                "naive_block_runs": self.naive_block_runs, "prefix_auc": self.prefix_auc}

    def scalars(self, prefix: str = "stages") -> dict[str, float]:
        """Scalar names and values of the headline metric: ``<prefix>/<order>/k<k>``
        (``/<mask>`` for window and custom orders) and ``<prefix>/prefix_auc``."""
        metric = self.headline
        out = {f"{prefix}/{r.order}/" + (f"k{r.k}" if r.order in K_ORDERS else r.mask):
               r.value(metric) for r in self.rows}
        auc = self.prefix_auc
        if auc is not None:
            out[f"{prefix}/prefix_auc"] = auc
        return out


@dataclass
class MaskBytes:
    """One row of ``masks.csv``: what a mask costs in memory and on the wire.

    ``student_bytes``: the student blocks and adapters the mask runs (fp32);
    ``teacher_bytes_<dtype>``: its teacher blocks stored at that precision (estimated
    from the tensors, see ``pwl.precision``); ``teacher_bytes_bundle``: the sizes of
    its teacher files when the model came from a bundle, else None (empty).
    """

    mask: str
    k: int
    accuracy: float
    student_bytes: int
    teacher_bytes_fp32: int
    teacher_bytes_fp16: int
    teacher_bytes_int8: int
    teacher_bytes_bundle: int | None
    bpc: float | None = None


def write_masks(rows: Iterable[MaskBytes], path: str | Path) -> Path:
    """Writes ``masks.csv`` (atomically): one row per mask, its accuracy and bytes, and a
    language model's bits per character (``bpc``, a column only then)."""
    rows = list(rows)
    columns = [f.name for f in fields(MaskBytes)]
    if all(r.bpc is None for r in rows):
        columns.remove("bpc")
    return _write_columns(rows, columns, path)


def _write_columns(rows: Sequence[Any], columns: Sequence[str], path: str | Path) -> Path:
    """Writes the ``columns`` of dataclass ``rows`` as a CSV (atomically; None as empty)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(["" if (v := getattr(r, c)) is None else v for c in columns] for r in rows)
    return atomic_write_text(path, buf.getvalue())



def last_epoch(rows: Sequence[StageRow]) -> list[StageRow]:
    """The rows of the last epoch in ``rows`` (all of them if they share one epoch)."""
    if not rows:
        return []
    last = max(r.epoch for r in rows)
    return [r for r in rows if r.epoch == last]


def accuracy_by_mask(rows: Iterable[StageRow]) -> dict[str, float]:
    """Accuracy per distinct mask, in order of k (first row wins for a repeated mask)."""
    return value_by_mask(rows, ACCURACY)


def value_by_mask(rows: Iterable[StageRow], metric: StageMetric) -> dict[str, float]:
    """``metric`` per distinct mask, in order of k (first row wins for a repeated mask)."""
    by_mask: dict[str, float] = {}
    for r in rows:
        by_mask.setdefault(r.mask, r.value(metric))
    return dict(sorted(by_mask.items(), key=lambda kv: order_key(kv[0])))


def write_csv(rows: Iterable[StageRow], path: str | Path) -> Path:
    """Writes ``rows`` as a stages CSV (atomically), with the metric columns they fill."""
    rows = list(rows)
    return _write_columns(rows, columns_of(rows), path)


def read_stages(path: str | Path) -> list[StageRow]:
    """Rows of a ``stages.csv`` with their types restored.

    Raises:
        CheckpointError: the file is missing, or is not a stages CSV (names the file).
    """
    path = Path(path)
    types = {f.name: f.type for f in fields(StageRow)}
    cast = {"int": int, "float": float, "str": str}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CheckpointError(f"{path} is not a stages CSV (no columns {missing}); "
                                      "write it with pwl.evaluate or a distill run")
            extra = [c for c in METRIC_COLUMNS if c in (reader.fieldnames or [])]
            return [StageRow(**{k: cast[types[k]](rec[k]) for k in COLUMNS},
                             **{k: float(rec[k]) if rec[k] else None for k in extra})
                    for rec in reader]
    except OSError as e:
        raise CheckpointError(f"cannot read stage accuracies {path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a malformed row ({e}); re-create it with "
                              "pwl.evaluate") from None


def write_json(results: Sequence[StageResult], path: str | Path,
               meta: Mapping[str, Any] | None = None) -> Path:
    """All rows, plus the headline metric and its direction and one metadata record per
    evaluation (block runs, samples, AUC)."""
    path = Path(path)
    rows = [r for res in results for r in res.rows]
    metric = results[-1].headline if results else ACCURACY
    columns = columns_of(rows)
    doc = {"columns": columns, "metric": metric.name,
           "higher_is_better": metric.higher_is_better, **dict(meta or {}),
           "rows": [{k: v for k, v in asdict(r).items() if k in columns} for r in rows],
           "evaluations": [res.meta() for res in results]}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def plot_stages(result: StageResult, path: str | Path, title: str = "") -> Path:
    """The headline metric vs teacher blocks k, one line per order; teacher and student as
    references.

    Where an order has several masks per k (window, custom) the line joins their
    mean and the masks are drawn as points.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display

    path = Path(path)
    n = result.num_blocks
    metric = result.headline
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    by_mask = {r.mask: r.value(metric) for r in result.rows}
    for mask, label, style in (("T" * n, "teacher", "--"), ("S" * n, "student", ":")):
        if mask in by_mask:
            ax.axhline(by_mask[mask], color="grey", linestyle=style, linewidth=1,
                       label=f"{label} ({by_mask[mask]:.3f})")
    for order in dict.fromkeys(r.order for r in result.rows):
        rows = [r for r in result.rows if r.order == order]
        ks = sorted({r.k for r in rows})
        means = [sum(r.value(metric) for r in rows if r.k == k) / sum(r.k == k for r in rows)
                 for k in ks]
        (line,) = ax.plot(ks, means, marker="o", label=order)
        if len(ks) < len(rows):
            ax.scatter([r.k for r in rows], [r.value(metric) for r in rows], s=12, alpha=0.5,
                       color=line.get_color())
    ax.set_xticks(range(n + 1))
    ax.set_xlabel("teacher blocks loaded (k)")
    ax.set_ylabel(metric.label + ("" if metric.higher_is_better else " (lower is better)"))
    ax.set_title(title or f"stages, epoch {result.epoch}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def write_stages(results: Sequence[StageResult], out_dir: str | Path, stem: str = "stages",
                 meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Writes ``<stem>.csv``, ``<stem>.json`` (all evaluations) and ``<stem>.png`` (the last).

    Returns:
        The paths by kind: ``{"csv": ..., "json": ..., "png": ...}``.
    """
    if not results:
        raise ValueError("write_stages needs at least one evaluation")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for res in results for r in res.rows]
    return {"csv": write_csv(rows, out_dir / f"{stem}.csv"),
            "json": write_json(results, out_dir / f"{stem}.json", meta),
            "png": plot_stages(results[-1], out_dir / f"{stem}.png")}
