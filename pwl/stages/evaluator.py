"""Stage evaluation: accuracy of every partial-teacher mask, sharing common prefixes.

Masks that start alike share their computation: the masks of an evaluation
form a trie whose nodes are the distinct prefixes ``mask[:i+1]``; each node
runs block ``i`` once per batch (after an adapter where the network changes)
and hands its output to its children. The prefix order ``TSSS -> TTTT`` of
N=4 thus runs 14 blocks per batch instead of the 20 that five separate
forwards would run.

Results are rows of the **contract** ``stages.csv`` (``pwl.stages.files``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pwl.blocks import BlockNet
from pwl.errors import ConfigError, DataError
from pwl.hybrid import HybridNet
from pwl.masks import masks_for_order, parts_needed, resolve_masks, teacher_blocks
from pwl.precision import estimated_bytes
from pwl.stages.files import MaskBytes, StageRow

# Orders whose masks are named by k alone in scalar keys (one mask per k).
K_ORDERS = ("prefix", "suffix")


def mask_teacher_params(hybrid: HybridNet, mask: str) -> int:
    """Parameters of the teacher units that ``mask`` runs."""
    return sum(hybrid.teacher.unit_num_params(i) for i, who in enumerate(mask) if who == "T")


def mask_bytes_loaded(hybrid: HybridNet, mask: str) -> int:
    """Bytes ``mask`` needs beyond the student shard (which holds student and adapters)."""
    return sum(hybrid.teacher.unit_num_bytes(i) for i, who in enumerate(mask) if who == "T")


def teacher_block_bytes(teacher: BlockNet, dtype: str = "fp32") -> list[int]:
    """Bytes of each teacher block's tensors stored at ``dtype`` (``pwl.precision``), block 0 first.

    An estimate from the tensors' sizes: a bundle's files add a small header each.
    """
    return [sum(estimated_bytes(dict((*m.named_parameters(), *m.named_buffers())), dtype)
                for m in teacher.unit_modules(i)) for i in range(teacher.num_blocks)]


def student_bytes_used(hybrid: HybridNet, mask: str) -> int:
    """Bytes of the student blocks and adapters ``mask`` still runs (what remains of the
    student shard once everything else is freed)."""
    _, student, adapters = parts_needed([mask])
    tensors = [t for i in student for m in hybrid.student.unit_modules(i)
               for t in (*m.parameters(), *m.buffers())]
    tensors += [t for kind, b in adapters for t in (*getattr(hybrid.adapters, kind)[b].parameters(),
                                                    *getattr(hybrid.adapters, kind)[b].buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def mask_bytes(hybrid: HybridNet, accuracy: dict[str, float],
               bundle_block_bytes: Sequence[int] | None = None) -> list[MaskBytes]:
    """Per mask: its accuracy, the student bytes it still runs and its teacher bytes at
    every precision (estimated), and in the bundle's files when ``bundle_block_bytes``
    (one size per teacher file) is given."""
    per_dtype = {dtype: teacher_block_bytes(hybrid.teacher, dtype)
                 for dtype in ("fp32", "fp16", "int8")}

    def teacher(sizes: Sequence[int], mask: str) -> int:
        return sum(size for size, who in zip(sizes, mask) if who == "T")

    return [MaskBytes(mask=mask, k=teacher_blocks(mask), accuracy=acc,
                      student_bytes=student_bytes_used(hybrid, mask),
                      teacher_bytes_fp32=teacher(per_dtype["fp32"], mask),
                      teacher_bytes_fp16=teacher(per_dtype["fp16"], mask),
                      teacher_bytes_int8=teacher(per_dtype["int8"], mask),
                      teacher_bytes_bundle=(teacher(bundle_block_bytes, mask)
                                            if bundle_block_bytes is not None else None))
            for mask, acc in accuracy.items()]


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


class StageEvaluator:
    """Accumulates per-mask accuracy and time over batches, sharing common prefixes.

    Args:
        hybrid: the model; put it in eval mode and disable grad before ``update``.
        orders: loading-order names and/or explicit masks (see ``resolve_masks``).
        flip_pairs: (mask a, mask b) pairs, both among the masks of ``orders``, whose
            right-to-wrong flips are counted (``StageResult.flips``); e.g. the
            consecutive masks of a loading order, for its monotonicity.
    """

    def __init__(self, hybrid: HybridNet, orders: str | Sequence[str],
                 flip_pairs: Sequence[tuple[str, str]] = ()) -> None:
        self.hybrid = hybrid
        self.num_blocks = n = hybrid.num_blocks
        self.pairs = resolve_masks(orders, n)
        self.masks = list(dict.fromkeys(mask for _, mask in self.pairs))
        self.mask_index = {mask: j for j, mask in enumerate(self.masks)}
        self.flip_pairs = list(dict.fromkeys((a, b) for a, b in flip_pairs))
        unknown = sorted({m for pair in self.flip_pairs for m in pair} - set(self.masks))
        if unknown:
            raise ConfigError(f"flip_pairs name masks {unknown} that orders does not "
                              "evaluate; add them to orders")
        self._flip_masks = {m for pair in self.flip_pairs for m in pair}
        # Per-image correctness of the current batch, for the masks of flip_pairs only.
        self._hits: dict[str, torch.Tensor] = {}
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
        self.flips = torch.zeros(len(self.flip_pairs), dtype=torch.long, device=device)
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
        for j, (before, after) in enumerate(self.flip_pairs):
            self.flips[j] += (self._hits[before] & ~self._hits[after]).sum()
        self._hits.clear()
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
            x = self.hybrid.step(i, feature, node[-1] if node else None, who)
            marks[child] = (start, self._mark())
            self.block_runs += 1
            if i == self.num_blocks - 1:
                hits = x.argmax(dim=1) == labels
                self.correct[self.mask_index[child]] += hits.sum()
                if child in self._flip_masks:
                    self._hits[child] = hits
            else:
                self._visit(child, x, labels, marks)

    def counts(self) -> torch.Tensor:
        """(M+P+3,) int64 on the model's device: correct per distinct mask, flips per
        flip pair, then images, batches and block runs.

        Summing it over processes (DDP) and passing it to ``result`` gives exact accuracy.
        """
        extra = torch.tensor([self.total, self.batches, self.block_runs], dtype=torch.long,
                             device=self.correct.device)
        return torch.cat([self.correct, self.flips, extra])

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
        m = len(self.masks)
        correct, flips, (total, batches, block_runs) = counts[:m], counts[m:-3], counts[-3:]
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
                           naive_block_runs=batches * len(self.masks) * self.num_blocks,
                           flips=dict(zip(self.flip_pairs, flips)))


def evaluate_stages(hybrid: HybridNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    orders: str | Sequence[str], epoch: int = 0,
                    flip_pairs: Sequence[tuple[str, str]] = ()) -> StageResult:
    """Evaluates ``orders`` on preprocessed batches (images (B, C, H, W), labels (B,)).

    The hybrid is put in eval mode for the evaluation and restored afterwards;
    ``flip_pairs`` as in ``StageEvaluator``.
    """
    evaluator = StageEvaluator(hybrid, orders, flip_pairs)
    was_training = hybrid.training
    hybrid.eval()
    try:
        for images, labels in batches:
            evaluator.update(images, labels)
    finally:
        hybrid.train(was_training)
    return evaluator.result(epoch)


