"""Distances between two batches of features, for the feature loss terms.

Every distance takes two tensors of one shape, feature maps (B, C, H, W) or
ViT tokens (B, L, D), and returns a scalar: zero when they are equal, positive
when they differ, and the same with the two swapped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pwl.errors import ConfigError
from pwl.registry import Registry

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTANCES: Registry[Distance] = Registry("distance")


class _MeanSquaredError(torch.autograd.Function):
    """``F.mse_loss(a, b)`` as bf16 autocast computes it (in fp32), with fewer passes.

    Under autocast ``F.mse_loss`` copies both inputs to fp32, and its backward is slow on
    NHWC tensors. This one widens only the difference (exact for bf16 inputs), works in
    place on it and saves the inputs, not the difference; values and gradients are
    ``F.mse_loss``'s bit for bit. It pays: the verdicts in
    ``experiments/results/bench_load/README.md`` give its share of the distillation step.
    """

    @staticmethod
    def _difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a - b`` in at least fp32, in a new buffer."""
        wide = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        return a.to(wide, copy=True).sub_(b)

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # The inputs are alive until the backward anyway (the graph holds them); an fp32
        # difference would be a new buffer twice their size.
        ctx.save_for_backward(a, b)
        return _MeanSquaredError._difference(a, b).square_().mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        if not (need_a or need_b):
            return None, None
        diff = _MeanSquaredError._difference(a, b)
        diff.mul_(2 / diff.numel()).mul_(grad)  # F.mse_loss's order: equal bits
        grad_a = diff.to(a.dtype) if need_a else None
        if not need_b:
            return grad_a, None
        # Negation is exact, so negating the rounded gradient equals rounding the negated one.
        if grad_a is not None and a.dtype == b.dtype:
            return grad_a, grad_a.neg()
        # grad_a may be diff itself (a in the wide dtype), so negate into a new tensor.
        return grad_a, diff.neg().to(b.dtype)


@DISTANCES.register()
def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements, computed in at least fp32."""
    if a.shape != b.shape:
        raise ValueError(f"mse needs two features of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return _MeanSquaredError.apply(a, b)


@DISTANCES.register()
def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements."""
    return F.l1_loss(a, b)


@DISTANCES.register()
def smooth_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Huber loss (beta=1) over all elements."""
    return F.smooth_l1_loss(a, b)


@DISTANCES.register()
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of each sample's flattened features, mean over the batch."""
    return (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)).mean()


@DISTANCES.register()
def mse_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mse + cosine``: matches both the magnitude and the direction (per sample)."""
    return mse(a, b) + cosine(a, b)


@DISTANCES.register()
def cosine_per_position(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity over the feature dim at each position, mean over batch and positions.

    The feature dim is the channels of maps (B, C, H, W), one cosine per pixel, and the
    width of tokens (B, L, D), one cosine per token. Unlike ``cosine`` it ignores how the
    features are spread over positions and matches each position's direction on its own.
    """
    dim = 1 if a.dim() == 4 else -1
    return (1 - F.cosine_similarity(a, b, dim=dim)).mean()


@DISTANCES.register()
def mse_cosine_per_position(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mse + cosine_per_position``: the paper's feature distance (``loss=paper``)."""
    return mse(a, b) + cosine_per_position(a, b)


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """Spatial attention: squared activations summed over channels, unit L2 norm per sample.

    Args:
        x: feature maps (B, C, H, W) or tokens (B, L, D).

    Returns:
        (B, H*W) or (B, L).
    """
    if x.dim() == 4:
        energy = x.pow(2).sum(1).flatten(1)
    elif x.dim() == 3:
        energy = x.pow(2).sum(2)
    else:
        raise ConfigError(f"distance 'attention' needs feature maps (B,C,H,W) or tokens "
                          f"(B,L,D), got shape {tuple(x.shape)}; use distance=mse")
    return F.normalize(energy, dim=1)


@DISTANCES.register()
def attention(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Attention transfer: squared L2 distance of the attention maps, mean over the batch.

    The maps are normalised, so it ignores the features' scale; it lies in [0, 2].
    """
    return (attention_map(a) - attention_map(b)).pow(2).sum(1).mean()


@DISTANCES.register()
def cka(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """1 - linear CKA between the batches' flattened features (needs B >= 2).

    Computed from the (B, B) Gram matrices, which stay small however wide the
    features are. Invariant to orthogonal transforms and scaling of either side.
    """
    # Gram products lose too much precision in half precision.
    x = a.flatten(1).float()
    y = b.flatten(1).float()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    gram_x, gram_y = x @ x.T, y @ y.T
    similarity = (gram_x * gram_y).sum() / (gram_x.norm() * gram_y.norm()).clamp_min(eps)
    return 1 - similarity


def get_distance(name: str) -> Distance:
    """The distance called ``name``; raises ConfigError listing the known ones."""
    return DISTANCES.get(name, "distance").obj
