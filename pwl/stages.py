"""Stage evaluation: accuracy of every partial-teacher mask, sharing common prefixes.

Masks that start alike share their computation: the masks of an evaluation
form a trie whose nodes are the distinct prefixes ``mask[:i+1]``; each node
runs block ``i`` once per batch (after an adapter where the network changes)
and hands its output to its children. The prefix order ``TSSS -> TTTT`` of
N=4 thus runs 14 blocks per batch instead of the 20 that five separate
forwards would run.

Results are rows of the **contract** ``stages.csv``::

    epoch,order,k,mask,accuracy,teacher_params,bytes_loaded,ms_per_batch

written with ``stages.json`` (the same rows plus per-evaluation metadata) and
``stages.png`` (accuracy vs k, one line per order).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pwl.errors import ConfigError, DataError, MaskError
from pwl.hybrid import ORDERS, HybridNet, masks_for_order, teacher_blocks, validate_mask

# Orders whose masks are named by k alone in scalar keys (one mask per k).
K_ORDERS = ("prefix", "suffix")


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


def resolve_masks(orders: str | Sequence[str], num_blocks: int) -> list[tuple[str, str]]:
    """(order, mask) pairs for loading-order names and explicit masks.

    Args:
        orders: names among prefix|suffix|window|all and/or masks such as ``"TSTS"``.
        num_blocks: N.

    Returns:
        Distinct pairs in the given order. Explicit masks and the masks of ``all``
        (which is no loading order) get the order ``"custom"``.
    """
    if isinstance(orders, str):
        orders = [orders]
    if not orders:
        raise ConfigError("orders is empty; give loading orders (prefix, suffix, window, all) "
                          "and/or masks such as TTSS")
    pairs: list[tuple[str, str]] = []
    for entry in orders:
        if entry in ORDERS:
            label = "custom" if entry == "all" else entry
            pairs += [(label, mask) for mask in masks_for_order(entry, num_blocks)]
        elif isinstance(entry, str) and entry and set(entry) <= {"S", "T"}:
            pairs.append(("custom", validate_mask(entry, num_blocks)))
        else:
            raise MaskError(f"orders entry {entry!r} is neither a loading order {list(ORDERS)} "
                            f"nor a mask over {{S,T}} of length N={num_blocks}")
    return list(dict.fromkeys(pairs))


def mask_teacher_params(hybrid: HybridNet, mask: str) -> int:
    """Parameters of the teacher units that ``mask`` runs."""
    return sum(hybrid.teacher.unit_num_params(i) for i, who in enumerate(mask) if who == "T")


def mask_bytes_loaded(hybrid: HybridNet, mask: str) -> int:
    """Bytes ``mask`` needs beyond the student shard (which holds student and adapters)."""
    return sum(hybrid.teacher.unit_num_bytes(i) for i, who in enumerate(mask) if who == "T")


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

    Counts cover all processes when they were reduced; ``ms_per_batch`` is this process's.
    """

    rows: list[StageRow]
    num_blocks: int
    batches: int
    samples: int
    block_runs: int
    naive_block_runs: int

    @property
    def epoch(self) -> int:
        return self.rows[0].epoch

    @property
    def prefix_auc(self) -> float | None:
        return prefix_auc(self.rows, self.num_blocks)

    def accuracy(self, mask: str) -> float:
        return next(r.accuracy for r in self.rows if r.mask == mask)

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


class StageEvaluator:
    """Accumulates per-mask accuracy and time over batches, sharing common prefixes.

    Args:
        hybrid: the model; put it in eval mode and disable grad before ``update``.
        orders: loading-order names and/or explicit masks (see ``resolve_masks``).
    """

    def __init__(self, hybrid: HybridNet, orders: str | Sequence[str]) -> None:
        self.hybrid = hybrid
        self.num_blocks = n = hybrid.num_blocks
        self.pairs = resolve_masks(orders, n)
        self.masks = list(dict.fromkeys(mask for _, mask in self.pairs))
        self.mask_index = {mask: j for j, mask in enumerate(self.masks)}
        # The trie: "" is the input; a node's children extend it by one block.
        self.children: dict[str, list[str]] = {}
        for mask in self.masks:
            for i in range(n):
                node, child = mask[:i], mask[:i + 1]
                kids = self.children.setdefault(node, [])
                if child not in kids:
                    kids.append(child)
        self.prefixes = [p for kids in self.children.values() for p in kids]
        device = next(hybrid.parameters()).device
        self.correct = torch.zeros(len(self.masks), dtype=torch.long, device=device)
        self.total = 0
        self.batches = 0
        self.block_runs = 0
        # Time per node, summed over batches; the first batch also kept apart since it
        # carries one-off costs (allocator growth, kernel selection).
        self.node_ms = dict.fromkeys(self.prefixes, 0.0)
        self.first_node_ms: dict[str, float] = {}
        self._cuda = device.type == "cuda"

    def _mark(self) -> Any:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _elapsed_ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self._cuda else (end - start) * 1e3

    @torch.no_grad()
    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Evaluates every mask on one batch: images (B, C, H, W), labels (B,)."""
        marks: dict[str, tuple[Any, Any]] = {}
        self._visit("", images, labels, marks)
        if self._cuda:
            # Events are read once per batch so the blocks run without a sync between them.
            torch.cuda.synchronize(images.device)
        for node, (start, end) in marks.items():
            ms = self._elapsed_ms(start, end)
            self.node_ms[node] += ms
            if not self.batches:
                self.first_node_ms[node] = ms
        self.total += len(labels)
        self.batches += 1

    def _visit(self, node: str, feature: torch.Tensor, labels: torch.Tensor,
               marks: dict[str, tuple[Any, Any]]) -> None:
        """Runs the children of ``node`` (whose output is ``feature``), depth first,
        so only one feature per depth is alive at a time."""
        i = len(node)
        for child in self.children[node]:
            who = child[-1]
            start = self._mark()
            x = feature
            if node and node[-1] != who:
                x = self.hybrid.convert(i - 1, x, who)
            x = self.hybrid.net(who).run_block(i, x)
            marks[child] = (start, self._mark())
            self.block_runs += 1
            if i == self.num_blocks - 1:
                self.correct[self.mask_index[child]] += (x.argmax(dim=1) == labels).sum()
            else:
                self._visit(child, x, labels, marks)

    def counts(self) -> torch.Tensor:
        """(M+3,) int64 on the model's device: correct per distinct mask, then images,
        batches and block runs.

        Summing it over processes (DDP) and passing it to ``result`` gives exact accuracy.
        """
        extra = torch.tensor([self.total, self.batches, self.block_runs], dtype=torch.long,
                             device=self.correct.device)
        return torch.cat([self.correct, extra])

    @staticmethod
    def num_images(counts: torch.Tensor) -> int:
        """The number of images in a ``counts`` vector."""
        return int(counts[-3])

    def mask_ms(self, mask: str) -> float:
        """Milliseconds per batch of ``mask`` alone: its nodes' times along its path,
        averaged over the batches after the first (the first alone if there is one)."""
        path = [mask[:i + 1] for i in range(self.num_blocks)]
        if self.batches < 2:
            return sum(self.first_node_ms.get(p, 0.0) for p in path)
        later = sum(self.node_ms[p] - self.first_node_ms[p] for p in path)
        return later / (self.batches - 1)

    def result(self, epoch: int = 0, counts: torch.Tensor | None = None) -> StageResult:
        """The rows of this evaluation, from ``counts`` (e.g. reduced over processes)
        or from this process's own counts."""
        counts = (self.counts() if counts is None else counts).tolist()
        correct, (total, batches, block_runs) = counts[:-3], counts[-3:]
        if total == 0:
            raise DataError("stage evaluation saw no images; the evaluation split is empty")
        rows = [StageRow(epoch=epoch, order=order, k=teacher_blocks(mask), mask=mask,
                         accuracy=correct[self.mask_index[mask]] / total,
                         teacher_params=mask_teacher_params(self.hybrid, mask),
                         bytes_loaded=mask_bytes_loaded(self.hybrid, mask),
                         ms_per_batch=round(self.mask_ms(mask), 4))
                for order, mask in self.pairs]
        return StageResult(rows=rows, num_blocks=self.num_blocks, batches=batches,
                           samples=total, block_runs=block_runs,
                           naive_block_runs=batches * len(self.masks) * self.num_blocks)


def evaluate_stages(hybrid: HybridNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    orders: str | Sequence[str], epoch: int = 0) -> StageResult:
    """Evaluates ``orders`` on preprocessed batches (images (B, C, H, W), labels (B,)).

    The hybrid is put in eval mode for the evaluation and restored afterwards.
    """
    evaluator = StageEvaluator(hybrid, orders)
    was_training = hybrid.training
    hybrid.eval()
    try:
        for images, labels in batches:
            evaluator.update(images, labels)
    finally:
        hybrid.train(was_training)
    return evaluator.result(epoch)


def write_csv(rows: Iterable[StageRow], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(astuple(r) for r in rows)
    return path


def read_csv(path: str | Path) -> list[StageRow]:
    """Rows of a ``stages.csv`` with their types restored."""
    types = {f.name: f.type for f in fields(StageRow)}
    cast = {"int": int, "float": float, "str": str}
    with Path(path).open(newline="") as f:
        return [StageRow(**{k: cast[types[k]](v) for k, v in rec.items()})
                for rec in csv.DictReader(f)]


def write_json(results: Sequence[StageResult], path: str | Path,
               meta: Mapping[str, Any] | None = None) -> Path:
    """All rows, plus one metadata record per evaluation (block runs, samples, AUC)."""
    path = Path(path)
    doc = {"columns": list(COLUMNS), **dict(meta or {}),
           "rows": [asdict(r) for res in results for r in res.rows],
           "evaluations": [res.meta() for res in results]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
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
