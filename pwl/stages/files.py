"""Stage results and their files: one writer and one typed reader of the **contract**
``stages.csv``.

An evaluation (``StageResult``) is one ``StageRow`` per (order, mask). One row per
(epoch, mask)::

    epoch,order,k,mask,accuracy,teacher_params,bytes_loaded,ms_per_batch

``stages.json`` holds the same rows plus per-evaluation metadata, and
``stages.png`` plots the last evaluation (accuracy vs k, one line per order).
Everything that reads these files (export, report, reproduce) goes through
``read_stages``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pwl.atomic import atomic_write_text, write_dataclass_csv
from pwl.errors import CheckpointError
from pwl.masks import masks_for_order, order_key


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


COLUMNS = tuple(f.name for f in fields(StageRow))


# Orders whose masks are named by k alone in scalar keys (one mask per k).
K_ORDERS = ("prefix", "suffix")


def prefix_auc(rows: Iterable[StageRow], num_blocks: int) -> float | None:
    """Mean accuracy over the prefix curve k=0..N (its area), or None if a point is missing.

    ``rows`` are one evaluation's rows; the prefix masks may come from any order.
    """
    accuracy = {r.mask: r.accuracy for r in rows}
    masks = masks_for_order("prefix", num_blocks)
    if not all(m in accuracy for m in masks):
        return None
    return sum(accuracy[m] for m in masks) / len(masks)


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
        flips: per (mask a, mask b) pair asked for, the images that a classifies right
            and b wrong.

    Counts cover all processes when they were reduced; ``ms_per_batch`` is this process's.
    """

    rows: list[StageRow]
    num_blocks: int
    batches: int
    samples: int
    block_runs: int
    naive_block_runs: int
    flips: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return self.rows[0].epoch

    @property
    def prefix_auc(self) -> float | None:
        return prefix_auc(self.rows, self.num_blocks)

    def accuracy(self, mask: str) -> float:
        return next(r.accuracy for r in self.rows if r.mask == mask)

    def flip_rate(self, before: str, after: str) -> float:
        """The share of images ``before`` classifies right and ``after`` wrong: how often
        swapping ``before`` for ``after`` breaks an answer (0 for a monotone step)."""
        return self.flips[(before, after)] / self.samples

    def meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "num_blocks": self.num_blocks, "batches": self.batches,
                "samples": self.samples, "block_runs": self.block_runs,
                "naive_block_runs": self.naive_block_runs, "prefix_auc": self.prefix_auc}

    def scalars(self, prefix: str = "stages") -> dict[str, float]:
        """Scalar names and values: ``<prefix>/<order>/k<k>`` (``/<mask>`` for
        window and custom orders) and ``<prefix>/prefix_auc``."""
        out = {f"{prefix}/{r.order}/" + (f"k{r.k}" if r.order in K_ORDERS else r.mask):
               r.accuracy for r in self.rows}
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


def write_masks(rows: Iterable[MaskBytes], path: str | Path) -> Path:
    """Writes ``masks.csv`` (atomically): one row per mask, its accuracy and bytes."""
    return write_dataclass_csv(rows, MaskBytes, path)



def last_epoch(rows: Sequence[StageRow]) -> list[StageRow]:
    """The rows of the last epoch in ``rows`` (all of them if they share one epoch)."""
    if not rows:
        return []
    last = max(r.epoch for r in rows)
    return [r for r in rows if r.epoch == last]


def accuracy_by_mask(rows: Iterable[StageRow]) -> dict[str, float]:
    """Accuracy per distinct mask, in order of k (first row wins for a repeated mask)."""
    by_mask: dict[str, float] = {}
    for r in rows:
        by_mask.setdefault(r.mask, r.accuracy)
    return dict(sorted(by_mask.items(), key=lambda kv: order_key(kv[0])))


def write_csv(rows: Iterable[StageRow], path: str | Path) -> Path:
    """Writes ``rows`` as a stages CSV (atomically)."""
    return write_dataclass_csv(rows, StageRow, path)


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
            return [StageRow(**{k: cast[types[k]](rec[k]) for k in COLUMNS}) for rec in reader]
    except OSError as e:
        raise CheckpointError(f"cannot read stage accuracies {path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a malformed row ({e}); re-create it with "
                              "pwl.evaluate") from None


def write_json(results: Sequence[StageResult], path: str | Path,
               meta: Mapping[str, Any] | None = None) -> Path:
    """All rows, plus one metadata record per evaluation (block runs, samples, AUC)."""
    path = Path(path)
    doc = {"columns": list(COLUMNS), **dict(meta or {}),
           "rows": [asdict(r) for res in results for r in res.rows],
           "evaluations": [res.meta() for res in results]}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def plot_stages(result: StageResult, path: str | Path, title: str = "") -> Path:
    """Accuracy vs teacher blocks k, one line per order; teacher and student as references.

    Where an order has several masks per k (window, custom) the line joins their
    mean and the masks are drawn as points.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display

    path = Path(path)
    n = result.num_blocks
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    by_mask = {r.mask: r.accuracy for r in result.rows}
    for mask, label, style in (("T" * n, "teacher", "--"), ("S" * n, "student", ":")):
        if mask in by_mask:
            ax.axhline(by_mask[mask], color="grey", linestyle=style, linewidth=1,
                       label=f"{label} ({by_mask[mask]:.3f})")
    for order in dict.fromkeys(r.order for r in result.rows):
        rows = [r for r in result.rows if r.order == order]
        ks = sorted({r.k for r in rows})
        means = [sum(r.accuracy for r in rows if r.k == k) / sum(r.k == k for r in rows)
                 for k in ks]
        (line,) = ax.plot(ks, means, marker="o", label=order)
        if len(ks) < len(rows):
            ax.scatter([r.k for r in rows], [r.accuracy for r in rows], s=12, alpha=0.5,
                       color=line.get_color())
    ax.set_xticks(range(n + 1))
    ax.set_xlabel("teacher blocks loaded (k)")
    ax.set_ylabel("accuracy")
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
