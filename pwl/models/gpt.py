"""Decoder-only causal transformer (character LM); layers grouped into blocks.

Block 0 carries the token and position embeddings, block N-1 the final LayerNorm and
the LM head. Tokens (B, L) int64 -> features (B, L, D) at every boundary -> logits
(B, L, vocab_size), position t predicting token t+1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from timm.layers import Mlp
from torch import nn

from pwl.blocks import BlockNet
from pwl.config import Schema
from pwl.errors import ConfigError
from pwl.models.registry import Depth, NumBlocks, NumClasses, Rate, Width, register
from pwl.models.vit import check_layers, group_sizes

MAX_CONTEXT = 1 << 16


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t: (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int, drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = (self.qkv(x).view(b, length, 3, self.num_heads, dim // self.num_heads)
                   .permute(2, 0, 3, 1, 4))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.drop if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, length, dim))


class DecoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenEmbedding(nn.Module):
    """Token plus learned position embedding: (B, L) int64 -> (B, L, D), L <= context_length."""

    def __init__(self, vocab_size: int, context_length: int, dim: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, context_length, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.context_length:
            raise ConfigError(f"a context of {length} tokens is longer than the model's "
                              f"context_length={self.context_length}; lower "
                              "data.context_length or build the model with a longer one")
        return self.tok(tokens) + self.pos[:, :length]


class LMHead(nn.Module):
    """Final LayerNorm and a linear map to the vocabulary: (B, L, D) -> (B, L, vocab_size)."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class GPTArgs(Schema):
    """The arguments of ``gpt`` a saved config may give."""

    vocab_size: NumClasses = 63
    context_length: int = Field(128, ge=1, le=MAX_CONTEXT)
    embed_dim: Width = 128
    depth: Depth = 6
    num_heads: Width = 4
    mlp_ratio: float = Field(4.0, gt=0.0, le=64.0)
    num_blocks: NumBlocks = 3
    drop_rate: Rate = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> GPTArgs:
        check_layers(self.embed_dim, self.num_heads, self.depth, self.num_blocks)
        return self


@register(GPTArgs)
def gpt(vocab_size: int = 63, context_length: int = 128, embed_dim: int = 128, depth: int = 6,
        num_heads: int = 4, mlp_ratio: float = 4.0, num_blocks: int = 3,
        drop_rate: float = 0.0) -> BlockNet:
    """A causal LM whose ``depth`` layers are grouped into ``num_blocks`` swap units.

    Args:
        vocab_size: symbols of the vocabulary (the logits' size).
        context_length: the longest context the position embedding covers.
        embed_dim: the token feature width D at every boundary.
    """
    if embed_dim % num_heads:
        raise ConfigError(f"model: embed_dim={embed_dim} is not a multiple of "
                          f"num_heads={num_heads}")
    layers = [DecoderLayer(embed_dim, num_heads, mlp_ratio, drop_rate) for _ in range(depth)]
    blocks, start = [], 0
    for size in group_sizes(depth, num_blocks):
        blocks.append(nn.Sequential(*layers[start:start + size]))
        start += size
    head = LMHead(embed_dim, vocab_size)
    for m in nn.ModuleList([*blocks, head]).modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return BlockNet(TokenEmbedding(vocab_size, context_length, embed_dim), blocks, head,
                    vocab_size, task="language_model")
