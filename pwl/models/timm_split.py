"""Any timm model cut into N blocks by naming its stages.

Known families get a default split: ResNet (``layer1..4``), ConvNeXt
(``stages.0..3``) and ViT/DeiT (transformer layers grouped into N blocks).
Any other model can be split by naming the modules of its stem, its stages and
its head in config; the named stages are grouped into ``num_blocks`` blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import timm
import torch
from pydantic import Field, field_validator
from timm.models.convnext import ConvNeXt
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pwl.blocks import BlockNet
from pwl.config import Schema
from pwl.errors import ConfigError
from pwl.models.registry import Depth, ImageSize, NumBlocks, NumClasses, Rate, Width, register
from pwl.models.vit import group_sizes


class TimmViTStem(nn.Module):
    """Patch embedding and position embedding of a timm VisionTransformer.

    It owns the stem's parameters under timm's attribute names and reuses
    timm's own ``_pos_embed`` so class, register and position tokens match timm.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        for name in ("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop",
                     "patch_drop", "norm_pre"):
            setattr(self, name, getattr(vit, name))
        self.no_embed_class = vit.no_embed_class
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.dynamic_img_size = vit.dynamic_img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = VisionTransformer._pos_embed(self, x)
        return self.norm_pre(self.patch_drop(x))


class TimmViTHead(nn.Module):
    """Final norm, pooling and classifier of a timm VisionTransformer."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        for name in ("norm", "attn_pool", "fc_norm", "head_drop", "head"):
            setattr(self, name, getattr(vit, name))
        self.global_pool = vit.global_pool
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.pool_include_prefix = getattr(vit, "pool_include_prefix", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = VisionTransformer.pool(self, self.norm(x))
        return self.head(self.head_drop(self.fc_norm(x)))


def _named(model: nn.Module, names: Sequence[str]) -> nn.Module:
    try:
        mods = [model.get_submodule(n) for n in names]
    except AttributeError as e:
        children = [n for n, _ in model.named_children()]
        raise ConfigError(f"timm model has no module {e}; its top-level modules are "
                          f"{children}") from None
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


def _default_split(model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    if isinstance(model, ResNet):
        return (["conv1", "bn1", "act1", "maxpool"], [f"layer{i}" for i in range(1, 5)],
                ["global_pool", "fc"])
    if isinstance(model, ConvNeXt):
        return (["stem"], [f"stages.{i}" for i in range(len(model.stages))],
                ["norm_pre", "head"])
    raise ConfigError(f"no default split for {type(model).__name__}; name its modules with "
                      "model.*.stem, model.*.stages and model.*.head")


ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$",
                                  max_length=200)]
ModuleNames = Annotated[list[ModuleName], Field(min_length=1, max_length=256)]


class TimmSplitArgs(Schema):
    """The arguments of ``timm_split`` a saved config may give.

    ``model_name`` must be a model of timm's own registry: a hub name
    (``hf-hub:...``) would fetch files from the network. Of the other
    ``timm.create_model`` arguments, the architectural knobs below are accepted.
    """

    model_name: str = Field(max_length=200)
    num_blocks: NumBlocks = 4
    num_classes: NumClasses = 10
    in_chans: Width = 3
    img_size: ImageSize | None = None
    pretrained: bool = False
    stem: ModuleNames | None = None
    stages: ModuleNames | None = None
    head: ModuleNames | None = None
    patch_size: ImageSize | None = None
    depth: Depth | None = None
    embed_dim: Width | None = None
    num_heads: Width | None = None
    mlp_ratio: float | None = Field(None, gt=0.0, le=64.0)
    drop_rate: Rate | None = None
    drop_path_rate: float | None = Field(None, ge=0.0, le=1.0)

    @field_validator("model_name")
    @classmethod
    def _a_timm_model(cls, name: str) -> str:
        if ":" in name or "/" in name or not timm.is_model(name):
            raise ValueError("is not a model of timm's registry (timm.list_models())")
        return name

    @field_validator("pretrained")
    @classmethod
    def _never_download(cls, pretrained: bool) -> bool:
        # A saved config never downloads weights: the file it came with holds them.
        return False


@register(TimmSplitArgs)
def timm_split(model_name: str, num_blocks: int = 4, num_classes: int = 10, in_chans: int = 3,
               img_size: int | None = None, pretrained: bool = False,
               stem: Sequence[str] | None = None, stages: Sequence[str] | None = None,
               head: Sequence[str] | None = None, **kwargs) -> BlockNet:
    """Builds ``timm.create_model(model_name, ...)`` and cuts it into ``num_blocks`` blocks.

    Args:
        model_name: any timm model name (``resnet18``, ``vit_tiny_patch16_224``...).
        num_blocks: N; the model's stages (or ViT layers) are grouped into N blocks.
        img_size: input size, passed to models that take one (ViT).
        pretrained: load hub weights; needs a reachable model hub.
        stem, stages, head: module names to split a model with no default split.
        **kwargs: any other ``timm.create_model`` argument (depth, embed_dim...).
    """
    if img_size is not None and model_name.startswith(("vit", "deit")):
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes,
                                  in_chans=in_chans, **kwargs)
    except RuntimeError as e:
        raise ConfigError(f"timm could not build {model_name!r}: {e}") from None
    if isinstance(model, VisionTransformer) and stages is None:
        sizes = group_sizes(len(model.blocks), num_blocks)
        starts = [sum(sizes[:i]) for i in range(num_blocks)]
        blocks = [nn.Sequential(*model.blocks[s:s + n]) for s, n in zip(starts, sizes)]
        return BlockNet(TimmViTStem(model), blocks, TimmViTHead(model), num_classes)
    if stages is None:
        d_stem, d_stages, d_head = _default_split(model)
        stem, stages, head = stem or d_stem, d_stages, head or d_head
    elif stem is None or head is None:
        raise ConfigError("a custom timm split needs stem, stages and head module names")
    sizes = group_sizes(len(stages), num_blocks)
    starts = [sum(sizes[:i]) for i in range(num_blocks)]
    blocks = [_named(model, stages[s:s + n]) for s, n in zip(starts, sizes)]
    return BlockNet(_named(model, stem), blocks, _named(model, head), num_classes)
