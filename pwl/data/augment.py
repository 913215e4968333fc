"""Batch augmentation as tensor operations, so it runs wherever the batch is (CPU or GPU)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pwl.errors import ConfigError

# Names of F.pad's modes as a data config spells them.
PAD_MODES = {"zeros": "constant", "reflect": "reflect"}


def random_crop(x: torch.Tensor, padding: int, padding_mode: str = "zeros") -> torch.Tensor:
    """Pads a batch (B, C, H, W) and crops every image at its own random offset.

    Args:
        x: images (B, C, H, W), any dtype.
        padding: pixels added on each side (0: no crop).
        padding_mode: ``zeros`` or ``reflect`` (mirror without repeating the edge pixel,
            torchvision's ``padding_mode="reflect"``).

    Returns:
        (B, C, H, W), the same dtype.
    """
    if padding_mode not in PAD_MODES:
        raise ConfigError(f"data.crop_padding_mode={padding_mode!r} is unknown; "
                          f"use one of {list(PAD_MODES)}")
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    if padding_mode == "reflect" and padding >= min(h, w):
        raise ConfigError(f"data.crop_padding={padding} must be smaller than the image "
                          f"({h}x{w}) with crop_padding_mode=reflect; lower data.crop_padding")
    padded = F.pad(x, (padding, padding, padding, padding), mode=PAD_MODES[padding_mode])
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


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotates each image of a batch about its centre, counter-clockwise by its own angle.

    Nearest-neighbour sampling with zeros outside the image, as torchvision's
    ``RandomRotation`` defaults; nearest keeps uint8 values exact. torchvision's
    ``rotate`` takes one angle per call, hence ``affine_grid`` for one angle per image.

    Args:
        x: images (B, C, H, W), any dtype.
        degrees: (B,) angles in degrees.

    Returns:
        (B, C, H, W), the same dtype.
    """
    b, _, h, w = x.shape
    rad = degrees.to(device=x.device, dtype=torch.float32) * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # Output pixel -> input pixel is the inverse rotation; the H/W ratios undo the
    # normalisation of both axes to [-1, 1], so non-square images rotate rigidly.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1),
                         torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.to(x.dtype)


def random_rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotates each image of a batch (B, C, H, W) by an angle drawn uniformly in [-degrees, degrees]."""
    if degrees <= 0:
        return x
    angles = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * degrees
    return rotate(x, angles)
