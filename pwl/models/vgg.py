"""VGG with batch norm; one stage (convs + max-pool) per block."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator
from timm.layers import ClassifierHead, ConvNormAct
from torch import nn

from pwl.blocks import BlockNet
from pwl.config import Schema
from pwl.errors import ConfigError
from pwl.models.registry import MAX_BLOCKS, Depth, NumClasses, Rate, Width, register


class VGGArgs(Schema):
    """The arguments of ``vgg`` a saved config may give."""

    depths: list[Depth] = Field([1, 1, 2, 2, 2], min_length=2, max_length=MAX_BLOCKS)
    widths: list[Width] = Field([32, 64, 128, 128, 128], min_length=2, max_length=MAX_BLOCKS)
    in_chans: Width = 3
    num_classes: NumClasses = 10
    drop_rate: Rate = 0.0

    @model_validator(mode="after")
    def _one_width_per_block(self) -> VGGArgs:
        if len(self.depths) != len(self.widths):
            raise ValueError(f"depths {self.depths} and widths {self.widths} must have the "
                             "same length (one entry per block)")
        return self


@register(VGGArgs)
def vgg(depths: Sequence[int] = (1, 1, 2, 2, 2), widths: Sequence[int] = (32, 64, 128, 128, 128),
        in_chans: int = 3, num_classes: int = 10, drop_rate: float = 0.0) -> BlockNet:
    """A VGG-BN whose stages are the swap units.

    Each stage is ``depth`` 3x3 conv-BN-ReLU layers followed by a 2x2 max-pool
    (ceil mode, so small inputs such as 28x28 survive five stages).
    The stem is empty: the first conv belongs to block 0.
    """
    if len(depths) != len(widths):
        raise ConfigError(f"model: depths {list(depths)} and widths {list(widths)} "
                          "must have the same length (one entry per block)")
    stages, ch = [], in_chans
    for d, w in zip(depths, widths):
        layers = []
        for _ in range(d):
            layers.append(ConvNormAct(ch, w, kernel_size=3))
            ch = w
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
        stages.append(nn.Sequential(*layers))
    head = ClassifierHead(ch, num_classes, pool_type="avg", drop_rate=drop_rate)
    return BlockNet(nn.Identity(), stages, head, num_classes)
