"""The hybrid forward: any mix of teacher and student blocks.

A mask (see ``pwl.masks``) says which network runs each block. ``HybridNet.step``
runs one block, after the adapter where the network switches; the whole forward,
a forward continued from a cached feature, the stage evaluator and the
distillation step's mixed paths all go through it.
"""

from __future__ import annotations

import torch
from torch import nn

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.errors import ConfigError
from pwl.masks import adapter_between, validate_mask


class HybridNet(nn.Module):
    """Teacher, student and adapters; runs any mask.

    The teacher is frozen: it stays in ``eval()`` mode whatever ``train()`` is
    called with, and its parameters do not require grad.
    """

    def __init__(self, teacher: BlockNet, student: BlockNet, adapters: Adapters,
                 freeze_teacher: bool = True) -> None:
        super().__init__()
        if teacher.num_blocks != student.num_blocks:
            raise ConfigError(f"teacher has N={teacher.num_blocks} blocks but student has "
                              f"N={student.num_blocks}; configure model.teacher and "
                              "model.student with the same number of blocks")
        if len(adapters) != teacher.num_blocks - 1:
            raise ConfigError(f"{len(adapters)} adapter pairs for N={teacher.num_blocks} blocks; "
                            f"expected N-1={teacher.num_blocks - 1}")
        self.teacher = teacher
        self.student = student
        self.adapters = adapters
        self.freeze_teacher = freeze_teacher
        if freeze_teacher:
            self.teacher.requires_grad_(False)
            self.teacher.eval()

    @property
    def num_blocks(self) -> int:
        return self.teacher.num_blocks

    def train(self, mode: bool = True) -> HybridNet:
        super().train(mode)
        if self.freeze_teacher:
            self.teacher.eval()
        return self

    def net(self, who: str) -> BlockNet:
        return self.teacher if who == "T" else self.student

    def convert(self, boundary: int, feature: torch.Tensor, to: str) -> torch.Tensor:
        """Converts the feature after block ``boundary`` into the space of ``to`` ('S'/'T')."""
        adapters = self.adapters.to_teacher if to == "T" else self.adapters.to_student
        return adapters[boundary](feature)

    def step(self, block: int, x: torch.Tensor, prev: str | None, who: str) -> torch.Tensor:
        """Runs ``block`` on network ``who`` ('S'/'T'), after the adapter at a switch.

        Args:
            block: the block to run.
            x: the output of block ``block - 1`` in the space of ``prev``'s network
                (the input when ``prev`` is None).
            prev: who ran the previous block ('S'/'T'), None at the input.
            who: who runs ``block``.
        """
        if adapter_between(prev, who) is not None:
            x = self.convert(block - 1, x, who)
        return self.net(who).run_block(block, x)

    def forward_from(self, boundary: int, feature: torch.Tensor, mask: str) -> torch.Tensor:
        """Continues a mask from a cached feature.

        Args:
            boundary: the block whose output ``feature`` is (-1: ``feature`` is the input).
            feature: in the space of ``mask[boundary]``'s network.
            mask: the full mask; blocks ``boundary+1 ..`` are run.

        Returns:
            logits (B, num_classes).
        """
        validate_mask(mask, self.num_blocks)
        x = feature
        prev = mask[boundary] if boundary >= 0 else None
        for i in range(boundary + 1, self.num_blocks):
            x = self.step(i, x, prev, mask[i])
            prev = mask[i]
        return x

    def forward(self, x: torch.Tensor, mask: str) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, C, H, W) under ``mask``."""
        return self.forward_from(-1, x, mask)
