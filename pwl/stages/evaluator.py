"""Stage evaluation: the metric of every partial-teacher mask, sharing common prefixes.

Masks that start alike share their computation: the masks of an evaluation
form a trie whose nodes are the distinct prefixes ``mask[:i+1]``; each node
runs block ``i`` once per batch (after an adapter where the network changes)
and hands its output to its children. The prefix order ``TSSS -> TTTT`` of
N=4 thus runs 14 blocks per batch instead of the 20 that five separate
forwards would run.

Each mask is scored by the task's metric (``pwl.stages.metrics``): accuracy for a
classifier; bits per character and next-character accuracy for a language model,
whose every position is a prediction. Results are rows of the **contract**
``stages.csv`` (``pwl.stages.files``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from pwl.errors import ConfigError, DataError
from pwl.hybrid import HybridNet
from pwl.masks import bytes_loaded, parse_orders, teacher_blocks
from pwl.stages.costs import mask_teacher_params, teacher_block_bytes
from pwl.stages.files import StageResult, StageRow
from pwl.stages.metrics import BPC, batch_scores, bits, metric_of


class StageEvaluator:
    """Accumulates per-mask scores and time over batches, sharing common prefixes.

    Args:
        hybrid: the model; put it in eval mode and disable grad before ``update``.
        orders: loading orders and/or masks (see ``pwl.masks.parse_orders``).
        flip_pairs: (mask a, mask b) pairs, both among the masks of ``orders``, whose
            right-to-wrong flips are counted (``StageResult.flips``); e.g. the
            consecutive masks of a loading order, for its monotonicity.
    """

    def __init__(self, hybrid: HybridNet, orders: Any,
                 flip_pairs: Sequence[tuple[str, str]] = ()) -> None:
        self.hybrid = hybrid
        self.metric = metric_of(hybrid)
        self.num_blocks = n = hybrid.num_blocks
        self.pairs = list(dict.fromkeys((order.name, mask) for order in parse_orders(orders, n)
                                        for mask in order.masks))
        self.masks = list(dict.fromkeys(mask for _, mask in self.pairs))
        self.mask_index = {mask: j for j, mask in enumerate(self.masks)}
        self.flip_pairs = list(dict.fromkeys((a, b) for a, b in flip_pairs))
        unknown = sorted({m for pair in self.flip_pairs for m in pair} - set(self.masks))
        if unknown:
            raise ConfigError(f"flip_pairs name masks {unknown} that orders does not "
                              "evaluate; add them to orders")
        self._flip_masks = {m for pair in self.flip_pairs for m in pair}
        # Per-prediction correctness of the current batch, for the masks of flip_pairs only.
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
        # Cross-entropy summed over predictions, in nats (bits per character of an LM).
        self.nll = torch.zeros(len(self.masks), dtype=torch.float64, device=device)
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
        """Evaluates every mask on one batch: images (B, C, H, W) and labels (B,), or
        tokens and next tokens (B, L)."""
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
        self.total += labels.numel()
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
                hits, nll = batch_scores(x, labels)
                self.correct[self.mask_index[child]] += hits.sum()
                self.nll[self.mask_index[child]] += nll
                if child in self._flip_masks:
                    self._hits[child] = hits
            else:
                self._visit(child, x, labels, marks)

    def counts(self) -> torch.Tensor:
        """(2M+P+3,) float64 on the model's device: correct per distinct mask, cross-entropy
        (nats) per distinct mask, flips per flip pair, then predictions, batches and block
        runs. The counts are integers, exact in float64 below 2**53.

        Summing it over processes (DDP) and passing it to ``result`` gives exact scores.
        """
        extra = torch.tensor([self.total, self.batches, self.block_runs],
                             dtype=torch.float64, device=self.correct.device)
        return torch.cat([self.correct.double(), self.nll, self.flips.double(), extra])

    @staticmethod
    def num_images(counts: torch.Tensor) -> int:
        """The number of predictions (images, or tokens) in a ``counts`` vector."""
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
        correct, nll, flips = counts[:m], counts[m:2 * m], [int(f) for f in counts[2 * m:-3]]
        total, batches, block_runs = (int(c) for c in counts[-3:])
        if total == 0:
            raise DataError("stage evaluation saw no images; the evaluation split is empty")
        block_bytes = teacher_block_bytes(self.hybrid.teacher)
        lm = self.metric == BPC
        rows = [StageRow(epoch=epoch, order=order, k=teacher_blocks(mask), mask=mask,
                         accuracy=int(correct[self.mask_index[mask]]) / total,
                         teacher_params=mask_teacher_params(self.hybrid, mask),
                         bytes_loaded=bytes_loaded(mask, block_bytes),
                         ms_per_batch=round(self.mask_ms(mask), 4),
                         bpc=bits(nll[self.mask_index[mask]], total) if lm else None)
                for order, mask in self.pairs]
        return StageResult(rows=rows, num_blocks=self.num_blocks, batches=batches,
                           samples=total, block_runs=block_runs,
                           naive_block_runs=batches * len(self.masks) * self.num_blocks,
                           flips=dict(zip(self.flip_pairs, flips)), metric=self.metric.name)


def evaluate_stages(hybrid: HybridNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    orders: Any, epoch: int = 0,
                    flip_pairs: Sequence[tuple[str, str]] = ()) -> StageResult:
    """Evaluates ``orders`` on preprocessed batches (images (B, C, H, W) and labels (B,), or
    tokens and next tokens (B, L)).

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


