"""CIFAR-style ResNet from timm's BasicBlock/Bottleneck; one stage per block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator
from timm.layers import ClassifierHead
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from pwl.blocks import BlockNet
from pwl.config import Schema
from pwl.errors import ConfigError
from pwl.models.registry import MAX_BLOCKS, Depth, NumClasses, Rate, Width, register

_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _stage(block: type[nn.Module], in_ch: int, planes: int, depth: int,
           stride: int) -> tuple[nn.Sequential, int]:
    out_ch = planes * block.expansion
    layers = []
    for j in range(depth):
        s = stride if j == 0 else 1
        downsample = None
        if s != 1 or in_ch != out_ch:
            downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=s, bias=False),
                                       nn.BatchNorm2d(out_ch))
        layers.append(block(in_ch, planes, stride=s, downsample=downsample))
        in_ch = out_ch
    return nn.Sequential(*layers), out_ch


class ResNetArgs(Schema):
    """The arguments of ``resnet`` a saved config may give."""

    depths: list[Depth] = Field([2, 2, 2, 2], min_length=2, max_length=MAX_BLOCKS)
    widths: list[Width] = Field([16, 32, 64, 128], min_length=2, max_length=MAX_BLOCKS)
    block: Literal["basic", "bottleneck"] = "basic"
    stem_width: Width | None = None
    in_chans: Width = 3
    num_classes: NumClasses = 10
    drop_rate: Rate = 0.0

    @model_validator(mode="after")
    def _one_width_per_block(self) -> ResNetArgs:
        if len(self.depths) != len(self.widths):
            raise ValueError(f"depths {self.depths} and widths {self.widths} must have the "
                             "same length (one entry per block)")
        return self


@register(ResNetArgs)
def resnet(depths: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (16, 32, 64, 128),
           block: str = "basic", stem_width: int | None = None, in_chans: int = 3,
           num_classes: int = 10, drop_rate: float = 0.0) -> BlockNet:
    """A ResNet whose stages are the swap units.

    Args:
        depths: residual blocks per stage; its length is N.
        widths: planes per stage (output channels are ``widths * expansion``).
        block: ``basic`` or ``bottleneck``.
        stem_width: channels of the 3x3 stem conv (default ``widths[0]``).
    """
    if len(depths) != len(widths):
        raise ConfigError(f"model: depths {list(depths)} and widths {list(widths)} "
                          "must have the same length (one entry per block)")
    if block not in _BLOCKS:
        raise ConfigError(f"model.block={block!r} is unknown; use one of {sorted(_BLOCKS)}")
    block_cls = _BLOCKS[block]
    stem_width = stem_width or widths[0]
    stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
    stages, ch = [], stem_width
    for i, (d, w) in enumerate(zip(depths, widths)):
        stage, ch = _stage(block_cls, ch, w, d, stride=1 if i == 0 else 2)
        stages.append(stage)
    for m in nn.ModuleList(stages).modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    head = ClassifierHead(ch, num_classes, pool_type="avg", drop_rate=drop_rate)
    return BlockNet(stem, stages, head, num_classes)
