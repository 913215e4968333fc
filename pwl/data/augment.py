"""Batch augmentation as tensor operations, so it runs wherever the batch is (CPU or GPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Pads a batch (B, C, H, W) with zeros and crops every image at its own random offset."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    off_x = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (off_y[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (off_x[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flips each image of a batch (B, C, H, W) left-right with probability ``p``."""
    if p <= 0:
        return x
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
