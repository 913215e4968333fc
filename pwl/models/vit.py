"""Vision Transformer from timm's PatchEmbed and Block; layers grouped into blocks."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from pwl.blocks import BlockNet
from pwl.config import Schema
from pwl.errors import ConfigError
from pwl.models.registry import Depth, ImageSize, NumBlocks, NumClasses, Width, register


class ViTStem(nn.Module):
    """Patch embedding, class token and learned position embedding.

    (B, C, H, W) -> tokens (B, 1 + H*W/p^2, D).
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class ViTHead(nn.Module):
    """Final LayerNorm, class token, linear classifier: (B, L, D) -> (B, classes)."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x)[:, 0])


def group_sizes(depth: int, num_blocks: int) -> list[int]:
    """Splits ``depth`` layers into ``num_blocks`` groups, earlier groups larger."""
    if not 1 <= num_blocks <= depth:
        raise ConfigError(f"model: cannot group depth={depth} layers into "
                          f"num_blocks={num_blocks} blocks (need 1 <= num_blocks <= depth)")
    base, extra = divmod(depth, num_blocks)
    return [base + (1 if i < extra else 0) for i in range(num_blocks)]


def check_layers(embed_dim: int, num_heads: int, depth: int, num_blocks: int) -> None:
    """A transformer's heads divide its width and its N blocks have a layer each."""
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not a multiple of num_heads={num_heads}")
    if num_blocks > depth:
        raise ValueError(f"num_blocks={num_blocks} exceeds depth={depth}")


class ViTArgs(Schema):
    """The arguments of ``vit`` a saved config may give."""

    img_size: ImageSize = 32
    patch_size: ImageSize = 4
    in_chans: Width = 3
    num_classes: NumClasses = 10
    embed_dim: Width = 192
    depth: Depth = 12
    num_heads: Width = 3
    mlp_ratio: float = Field(4.0, gt=0.0, le=64.0)
    num_blocks: NumBlocks = 6
    drop_path_rate: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> ViTArgs:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size={self.img_size} is not a multiple of "
                             f"patch_size={self.patch_size}")
        check_layers(self.embed_dim, self.num_heads, self.depth, self.num_blocks)
        return self


@register(ViTArgs)
def vit(img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
        embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
        num_blocks: int = 6, drop_path_rate: float = 0.0) -> BlockNet:
    """A ViT whose ``depth`` transformer layers are grouped into ``num_blocks`` swap units."""
    if img_size % patch_size:
        raise ConfigError(f"model: img_size={img_size} is not a multiple of "
                          f"patch_size={patch_size}")
    if embed_dim % num_heads:
        raise ConfigError(f"model: embed_dim={embed_dim} is not a multiple of "
                          f"num_heads={num_heads}")
    # Built on the CPU so the model can also be built under a meta-device context.
    dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
    layers = [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i])
              for i in range(depth)]
    blocks, start = [], 0
    for size in group_sizes(depth, num_blocks):
        blocks.append(nn.Sequential(*layers[start:start + size]))
        start += size
    for m in nn.ModuleList(blocks).modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    stem = ViTStem(img_size, patch_size, in_chans, embed_dim)
    return BlockNet(stem, blocks, ViTHead(embed_dim, num_classes), num_classes)
