"""The cross-path loss: mixed masks answer like the teacher and the labels.

Each mixed mask's logits come from ``DistillOutputs.mixed_logits``, which
continues from the cached activation at the mask's first switch, so a mask
costs only the blocks after that switch. The masks themselves come from
``pwl.masks``.
"""

from __future__ import annotations

import torch

from pwl.errors import ConfigError
from pwl.hybrid import HybridNet
from pwl.losses.base import DistillOutputs, LossTerm, register_loss
from pwl.losses.terms import check_temperature, cross_entropy, kd_loss
from pwl.masks import prefix_masks, random_mixed_mask, suffix_masks

MODES = ("random", "all_prefix", "all_suffix", "sampled")
TARGETS = ("kd", "ce", "both")


@register_loss(name="cross_path")
class CrossPath(LossTerm):
    """KD and/or CE on the logits of mixed masks, averaged over the masks of a step.

    Args:
        mode: ``random`` (one mask from ``random_mixed_mask``), ``all_prefix``
            (every T..TS..S), ``all_suffix`` (every S..ST..T) or ``sampled``
            (``num_masks`` draws of ``random_mixed_mask``, with replacement).
        target: ``kd`` (teacher's soft labels), ``ce`` (labels) or ``both``
            (``kd_weight * KL + ce_weight * CE``).
        temperature: of the KD target.
        num_masks: masks per step in ``sampled`` mode.
        kd_weight: factor of the KL part of each mask's loss (``target`` kd or both).
        ce_weight: factor of the CE part of each mask's loss (``target`` ce or both); the
            reference's ``all_prefix`` mode uses 0.6 KL + 0.4 CE, the student's own mix.
    """

    def __init__(self, mode: str = "random", target: str = "both", temperature: float = 2.0,
                 num_masks: int = 2, kd_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r} is unknown; use one of {list(MODES)}")
        if target not in TARGETS:
            raise ConfigError(f"target={target!r} is unknown; use one of {list(TARGETS)}")
        if isinstance(num_masks, bool) or not isinstance(num_masks, int) or num_masks < 1:
            raise ConfigError(f"num_masks={num_masks!r} must be a positive integer")
        for key, value in (("kd_weight", kd_weight), ("ce_weight", ce_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{key}={value!r} must be a number >= 0")
        self.mode = mode
        self.target = target
        self.temperature = check_temperature(temperature)
        self.num_masks = num_masks
        self.kd_weight = float(kd_weight)
        self.ce_weight = float(ce_weight)

    def masks(self, num_blocks: int) -> list[str]:
        """This step's mixed masks."""
        if self.mode == "all_prefix":
            return prefix_masks(num_blocks)
        if self.mode == "all_suffix":
            return suffix_masks(num_blocks)
        draws = self.num_masks if self.mode == "sampled" else 1
        return [random_mixed_mask(num_blocks) for _ in range(draws)]

    def forward(self, outputs: DistillOutputs) -> torch.Tensor:
        losses = []
        for mask in self.masks(outputs.num_blocks):
            logits = outputs.mixed_logits(mask)
            loss = logits.new_zeros(())
            if self.target in ("kd", "both"):
                kl = kd_loss(logits, outputs.teacher_logits, self.temperature)
                loss = loss + self.kd_weight * kl
            if self.target in ("ce", "both"):
                loss = loss + self.ce_weight * cross_entropy(logits, outputs.labels)
            losses.append(loss)
        return torch.stack(losses).mean()

    def describe(self, hybrid: HybridNet | None = None) -> str:
        def weighted(weight: float, part: str) -> str:
            return part if weight == 1 else f"{weight:g}*{part}"

        kl = weighted(self.kd_weight, f"KL(T={self.temperature:g})")
        ce = weighted(self.ce_weight, "CE")
        per_mask = {"kd": kl, "ce": ce, "both": f"{kl} + {ce}"}[self.target]
        masks = f"sampled({self.num_masks})" if self.mode == "sampled" else self.mode
        return f"mean_{{m in {masks}}} [{per_mask}](logits_m)"
