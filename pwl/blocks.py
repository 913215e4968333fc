"""BlockNet: a network cut into N swap units (blocks).

Block 0 carries the stem and block N-1 carries the head, so "running block i"
is the unit a teacher and a student exchange. Features are taken at the N-1
boundaries between blocks; the output of block N-1 is the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# What a network's logits predict; the task decides the stage metric (pwl.stages.metrics).
TASKS = ("classification", "language_model")


class BlockNet(nn.Module):
    """A stem, N blocks and a head.

    Args:
        stem: the input -> first block's input; images (B, C, H, W) for a classifier,
            tokens (B, L) int64 for a language model.
        blocks: the N swap units, in order.
        head: last block's output -> logits: (B, num_classes) for a classifier,
            (B, L, num_classes) (the next token at every position) for a language model.
        num_classes: size of the logits (classes, or the vocabulary).
        task: ``classification`` or ``language_model``.
    """

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module,
                 num_classes: int, task: str = "classification") -> None:
        super().__init__()
        if len(blocks) < 2:
            raise ValueError(f"a BlockNet needs at least 2 blocks, got {len(blocks)}")
        if task not in TASKS:
            raise ValueError(f"task={task!r} is unknown; use one of {list(TASKS)}")
        self.task = task
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.num_classes = num_classes

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype of the input: int64 tokens for a language model, else None (float)."""
        return torch.int64 if self.task == "language_model" else None

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Runs swap unit i: the stem is part of block 0, the head of block N-1."""
        if i == 0:
            x = self.stem(x)
        x = self.blocks[i](x)
        if i == self.num_blocks - 1:
            x = self.head(x)
        return x

    def unit_modules(self, i: int) -> list[nn.Module]:
        """The modules whose weights swap unit i needs."""
        mods: list[nn.Module] = [self.blocks[i]]
        if i == 0:
            mods.insert(0, self.stem)
        if i == self.num_blocks - 1:
            mods.append(self.head)
        return mods

    def unit_prefixes(self, i: int) -> list[str]:
        """State-dict key prefixes of swap unit i (for sharding weights per block)."""
        prefixes = [f"blocks.{i}."]
        if i == 0:
            prefixes.insert(0, "stem.")
        if i == self.num_blocks - 1:
            prefixes.append("head.")
        return prefixes

    def unit_num_params(self, i: int) -> int:
        return sum(p.numel() for m in self.unit_modules(i) for p in m.parameters())

    def unit_num_bytes(self, i: int) -> int:
        """Bytes of the parameters and buffers of swap unit i."""
        return sum(t.numel() * t.element_size() for m in self.unit_modules(i)
                   for t in (*m.parameters(), *m.buffers()))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, timm's intermediates: N-1 boundary features, then the logits."""
        outs = []
        for i in range(self.num_blocks):
            x = self.run_block(i, x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = self.run_block(i, x)
        return x
