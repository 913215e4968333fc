"""What every loss plugin sees: the cached block outputs of one distillation step.

The distillation step runs the teacher once and the student once, keeping the
output of every block (``DistillOutputs``). Plugins read those; a mixed path
starts from the cached activation at its first switch instead of re-running
the shared prefix (``DistillOutputs.mixed_logits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pwl.hybrid import HybridNet
from pwl.masks import first_switch
from pwl.registry import Registry


@dataclass
class DistillOutputs:
    """One training step's inputs and cached block outputs.

    Attributes:
        images: the inputs: normalised images (B, C, H, W), or tokens (B, L).
        labels: class indices (B,), or the next tokens (B, L).
        hybrid: the HybridNet (frozen teacher, student, adapters).
        teacher_feats: teacher block outputs 0..N-1 (last: logits, (B, C) or (B, L, V)),
            computed without grad.
        student_feats: student block outputs 0..N-1 (last: logits), with their graph.
    """

    images: torch.Tensor
    labels: torch.Tensor
    hybrid: HybridNet
    teacher_feats: list[torch.Tensor]
    student_feats: list[torch.Tensor]
    _mixed: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_blocks(self) -> int:
        return self.hybrid.num_blocks

    @property
    def teacher_logits(self) -> torch.Tensor:
        return self.teacher_feats[-1]

    @property
    def student_logits(self) -> torch.Tensor:
        return self.student_feats[-1]

    def feats(self, who: str) -> list[torch.Tensor]:
        return self.teacher_feats if who == "T" else self.student_feats

    def mixed_logits(self, mask: str) -> torch.Tensor:
        """Logits of ``mask``, continuing from the cached feature before its first switch.

        Results are memoised per step, so two plugins asking for one mask share it.
        """
        if mask not in self._mixed:
            switch = first_switch(mask)
            if switch is None:
                self._mixed[mask] = self.feats(mask[0])[-1]
            else:
                cached = self.feats(mask[0])[switch - 1]
                self._mixed[mask] = self.hybrid.forward_from(switch - 1, cached, mask)
        return self._mixed[mask]


class LossTerm(nn.Module):
    """A loss plugin: ``forward(outputs) -> scalar tensor``; register it with
    ``@register_loss(name=...)`` so that ``loss.terms`` can name it."""

    def forward(self, outputs: DistillOutputs) -> torch.Tensor:
        raise NotImplementedError

    def describe(self, hybrid: HybridNet | None = None) -> str:
        """A short formula of the term for the start-up log (e.g. ``KL(T=2)``).

        Args:
            hybrid: the model the term will train, for terms whose formula depends on
                it (e.g. boundaries without learnable adapters); None describes the
                term in general.
        """
        return type(self).__name__


LOSSES: Registry[type[LossTerm]] = Registry(
    "loss plugin", fix="a term names its plugin with loss.terms.<term>.plugin (default: the "
    "term's own name)")
register_loss = LOSSES.register
