"""The hybrid forward: any mix of teacher and student blocks.

A mask is a string over {S,T} of length N, block 0 first: ``"TTSS"`` runs the
teacher's first two blocks and the student's last two. Where consecutive blocks
come from different networks the feature passes through an adapter.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.errors import MaskError

ORDERS = ("prefix", "suffix", "window", "all")


def validate_mask(mask: str, num_blocks: int) -> str:
    """Returns ``mask`` if it is a string over {S,T} of length ``num_blocks``."""
    if not isinstance(mask, str):
        raise MaskError(f"mask must be a string over {{S,T}}, got {type(mask).__name__} {mask!r}")
    bad = sorted(set(mask) - {"S", "T"})
    if bad:
        raise MaskError(f"mask {mask!r} has letters {bad}; use only 'S' (student) and "
                        "'T' (teacher)")
    if len(mask) != num_blocks:
        raise MaskError(f"mask {mask!r} has length {len(mask)} but the model has "
                        f"N={num_blocks} blocks")
    return mask


def teacher_blocks(mask: str) -> int:
    """k: the number of teacher blocks in a mask."""
    return mask.count("T")


def masks_for_order(order: str, num_blocks: int) -> list[str]:
    """Masks in loading order, from the student (k=0) to the teacher (k=N).

    prefix: teacher blocks from the input side (``TSSS``, ``TTSS``...).
    suffix: teacher blocks from the output side (``SSST``, ``SSTT``...).
    window: every contiguous run of teacher blocks, shortest first.
    all: every one of the 2^N masks, ordered by k.
    """
    n = num_blocks
    if order == "prefix":
        return ["T" * k + "S" * (n - k) for k in range(n + 1)]
    if order == "suffix":
        return ["S" * (n - k) + "T" * k for k in range(n + 1)]
    if order == "window":
        runs = ["S" * start + "T" * k + "S" * (n - start - k)
                for k in range(1, n + 1) for start in range(n - k + 1)]
        return ["S" * n, *runs]
    if order == "all":
        masks = ["".join(m) for m in itertools.product("ST", repeat=n)]
        return sorted(masks, key=lambda m: (teacher_blocks(m), m[::-1]))
    raise MaskError(f"loading order {order!r} is unknown; use one of {list(ORDERS)} "
                    "or an explicit list of masks")


class HybridNet(nn.Module):
    """Teacher, student and adapters; runs any mask.

    The teacher is frozen: it stays in ``eval()`` mode whatever ``train()`` is
    called with, and its parameters do not require grad.
    """

    def __init__(self, teacher: BlockNet, student: BlockNet, adapters: Adapters,
                 freeze_teacher: bool = True) -> None:
        super().__init__()
        if teacher.num_blocks != student.num_blocks:
            raise MaskError(f"teacher has N={teacher.num_blocks} blocks but student has "
                            f"N={student.num_blocks}")
        if len(adapters) != teacher.num_blocks - 1:
            raise MaskError(f"{len(adapters)} adapter pairs for N={teacher.num_blocks} blocks; "
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
            who = mask[i]
            if prev is not None and who != prev:
                x = self.convert(i - 1, x, who)
            x = self.net(who).run_block(i, x)
            prev = who
        return x

    def forward(self, x: torch.Tensor, mask: str) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, C, H, W) under ``mask``."""
        return self.forward_from(-1, x, mask)
