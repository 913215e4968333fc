"""Loss plugins on the student alone and on the features at the block boundaries.

Notation in the formulas: ``s_i``/``t_i`` are the student's/teacher's outputs of
block i, ``to_S``/``to_T`` the adapters at boundary i, ``sg`` stop-gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pwl.errors import ConfigError
from pwl.hybrid import HybridNet
from pwl.losses.base import DistillOutputs, LossTerm, register_loss
from pwl.losses.distances import get_distance

DIRECTIONS = ("both", "to_student", "to_teacher")


def check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature} must be > 0 (2 is the usual choice)")
    return float(temperature)


def per_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Logits with one row per prediction: (B, C) stays, a language model's (B, L, V)
    becomes (B*L, V), so every loss is a mean over predictions (images or tokens)."""
    return logits.reshape(-1, logits.shape[-1])


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy, mean over predictions: logits (B, C) and labels (B,), or a language
    model's (B, L, V) and next tokens (B, L)."""
    return F.cross_entropy(per_prediction(logits), labels.reshape(-1),
                           label_smoothing=label_smoothing)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over predictions.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al.).

    Args:
        student_logits: (B, num_classes), or (B, L, V) per token, with grad.
        teacher_logits: the same shape, used as a fixed target.
    """
    student_logits = per_prediction(student_logits)
    teacher_logits = per_prediction(teacher_logits)
    target = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    log_probs = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_probs, target, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss(name="ce")
class CrossEntropy(LossTerm):
    """Hard-label cross-entropy of the student's logits."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        self.label_smoothing = float(label_smoothing)

    def forward(self, outputs: DistillOutputs) -> torch.Tensor:
        return cross_entropy(outputs.student_logits, outputs.labels, self.label_smoothing)

    def describe(self, hybrid: HybridNet | None = None) -> str:
        return f"CE(ls={self.label_smoothing:g})" if self.label_smoothing else "CE"


@register_loss(name="kd")
class KnowledgeDistillation(LossTerm):
    """KL divergence from the teacher's soft labels to the student's, at temperature T."""

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, outputs: DistillOutputs) -> torch.Tensor:
        return kd_loss(outputs.student_logits, outputs.teacher_logits, self.temperature)

    def describe(self, hybrid: HybridNet | None = None) -> str:
        return f"KL(T={self.temperature:g})"


@register_loss(name="feature_sync")
class FeatureSync(LossTerm):
    """Student and teacher features agree at every boundary, through the adapters.

    Mean over boundaries i < N-1 of ``d(s_i, to_S(t_i))`` (direction ``to_student``)
    plus ``d(t_i, to_T(s_i))`` (direction ``to_teacher``). Gradients reach the
    adapters and the student; the teacher's features are fixed targets.
    """

    def __init__(self, distance: str = "mse", directions: str = "both") -> None:
        super().__init__()
        if directions not in DIRECTIONS:
            raise ConfigError(f"directions={directions!r} is unknown; use one of {list(DIRECTIONS)}")
        self.distance_name = distance
        self.distance = get_distance(distance)
        self.directions = directions

    def forward(self, outputs: DistillOutputs) -> torch.Tensor:
        hybrid = outputs.hybrid
        losses = []
        for i in range(outputs.num_blocks - 1):
            s, t = outputs.student_feats[i], outputs.teacher_feats[i].detach()
            loss = s.new_zeros(())
            if self.directions in ("both", "to_student"):
                loss = loss + self.distance(s, hybrid.convert(i, t, "S"))
            if self.directions in ("both", "to_teacher"):
                loss = loss + self.distance(t, hybrid.convert(i, s, "T"))
            losses.append(loss)
        return torch.stack(losses).mean()

    def describe(self, hybrid: HybridNet | None = None) -> str:
        d = self.distance_name
        parts = {"to_student": f"{d}(s_i, to_S(t_i))", "to_teacher": f"{d}(t_i, to_T(s_i))"}
        if self.directions != "both":
            return f"mean_i {parts[self.directions]}"
        return f"mean_i [{parts['to_student']} + {parts['to_teacher']}]"


@register_loss(name="feature_recon")
class FeatureRecon(LossTerm):
    """The adapters at a boundary invert each other on the features that occur.

    Mean over boundaries of ``d(to_T(to_S(t_i)), t_i) + d(to_S(to_T(sg(s_i))), sg(s_i))``.
    Boundaries whose two adapters are identities are skipped: their round trip is
    exact by construction and has nothing to learn. With no other boundary the
    term is 0.

    Args:
        distance: a name of ``DISTANCES``.
        detach_student: stop the gradient into the student's feature ``s_i`` (then only
            the adapters learn from this term). The reference code does not detach it.
    """

    def __init__(self, distance: str = "mse", detach_student: bool = True) -> None:
        super().__init__()
        if not isinstance(detach_student, bool):
            raise ConfigError(f"detach_student={detach_student!r} must be true or false")
        self.distance_name = distance
        self.distance = get_distance(distance)
        self.detach_student = detach_student

    def forward(self, outputs: DistillOutputs) -> torch.Tensor:
        hybrid = outputs.hybrid
        losses = []
        for i in range(outputs.num_blocks - 1):
            if hybrid.adapters.is_identity(i):
                continue
            t = outputs.teacher_feats[i].detach()
            # Detached by default: this term is meant to constrain the adapters. With grad
            # into s the student could lower it by shrinking its features (a linear round
            # trip's error scales with them) instead of learning the task.
            s = outputs.student_feats[i]
            if self.detach_student:
                s = s.detach()
            t_round_trip = hybrid.convert(i, hybrid.convert(i, t, "S"), "T")
            s_round_trip = hybrid.convert(i, hybrid.convert(i, s, "T"), "S")
            losses.append(self.distance(t_round_trip, t) + self.distance(s_round_trip, s))
        if not losses:
            return outputs.student_logits.new_zeros(())
        return torch.stack(losses).mean()

    def describe(self, hybrid: HybridNet | None = None) -> str:
        d = self.distance_name
        s = "sg(s_i)" if self.detach_student else "s_i"
        formula = f"{d}(to_T(to_S(t_i)), t_i) + {d}(to_S(to_T({s})), {s})"
        if hybrid is None:
            return f"mean_i [{formula}]"
        learnable = [i for i in range(hybrid.num_blocks - 1) if not hybrid.adapters.is_identity(i)]
        if not learnable:
            return "0 (every boundary's adapters are identities)"
        if len(learnable) == hybrid.num_blocks - 1:
            return f"mean_i [{formula}]"
        return f"mean_{{i in {learnable}}} [{formula}] (other boundaries: identities)"
