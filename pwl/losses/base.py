"""What every loss plugin sees: the cached block outputs of one distillation step.

The distillation step runs the teacher once and the student once, keeping the
output of every block (``DistillOutputs``). Plugins read those; a mixed path
starts from the cached activation at its first switch instead of re-running
the shared prefix (``DistillOutputs.mixed_logits``). The conversions of cached
features, ``to_S(t_i)`` and ``to_T(s_i)``, are memoised per step: the feature terms
and the mixed paths' first switches share one adapter forward (and backward) each.
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
        images: normalised inputs (B, C, H, W).
        labels: class indices (B,).
        hybrid: the HybridNet (frozen teacher, student, adapters).
        teacher_feats: teacher block outputs 0..N-1 (last: logits), computed without grad.
        student_feats: student block outputs 0..N-1 (last: logits), with their graph.
    """

    images: torch.Tensor
    labels: torch.Tensor
    hybrid: HybridNet
    teacher_feats: list[torch.Tensor]
    student_feats: list[torch.Tensor]
    _mixed: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _to_student: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _to_teacher: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

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

    def teacher_to_student(self, boundary: int) -> torch.Tensor:
        """``to_S(t_i)``: the teacher's (fixed) feature after block ``boundary`` in the
        student's space. Memoised per step: the sync and reconstruction terms share one
        adapter forward, and its backward runs once for both."""
        if boundary not in self._to_student:
            t = self.teacher_feats[boundary].detach()
            self._to_student[boundary] = self.hybrid.convert(boundary, t, "S")
        return self._to_student[boundary]

    def student_to_teacher(self, boundary: int) -> torch.Tensor:
        """``to_T(s_i)``: the student's feature after block ``boundary`` in the teacher's
        space, with its graph (gradients reach the student and the adapter). Memoised per
        step: the sync term and a mixed path that switches from S to T there share it."""
        if boundary not in self._to_teacher:
            self._to_teacher[boundary] = self.hybrid.convert(
                boundary, self.student_feats[boundary], "T")
        return self._to_teacher[boundary]

    def converted(self, boundary: int, to: str) -> torch.Tensor:
        """The other network's cached feature after block ``boundary``, in the space of
        ``to`` ('S'/'T'): ``to_S(t_i)`` or ``to_T(s_i)``, memoised."""
        return self.teacher_to_student(boundary) if to == "S" else self.student_to_teacher(boundary)

    def mixed_logits(self, mask: str) -> torch.Tensor:
        """Logits of ``mask``, continuing from the cached feature before its first switch,
        converted by the memoised adapter there (``converted``).

        Results are memoised per step, so two plugins asking for one mask share it.
        """
        if mask not in self._mixed:
            switch = first_switch(mask)
            if switch is None:
                self._mixed[mask] = self.feats(mask[0])[-1]
            else:
                crossed = self.converted(switch - 1, mask[switch])
                self._mixed[mask] = self.hybrid.forward_from(switch - 1, crossed, mask,
                                                             feature_of=mask[switch])
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
