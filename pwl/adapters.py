"""Feature converters at every block boundary.

For boundary i (after block i, i < N-1), ``to_student[i]`` maps the teacher's
feature into the student's space and ``to_teacher[i]`` the other way. They are
built by probing the feature shapes of both networks, so any pair of widths and
spatial sizes works: channels change with a 1x1 conv (a linear layer on ViT
tokens), spatial size with average pooling (shrink) or interpolation (grow).
Kind ``identity_if_equal`` is the reference code's choice: a fixed identity
(no parameters) wherever the two feature shapes are equal, ``linear`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pwl.blocks import BlockNet
from pwl.errors import ConfigError

KINDS = ("identity", "identity_if_equal", "linear", "linear_bn", "mlp")


def _eye_(layer: nn.Module) -> None:
    """Initialises a square 1x1 conv or linear layer to the identity map."""
    with torch.no_grad():
        w = layer.weight
        w.zero_()
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        w.copy_(eye.view_as(w) if w.dim() == 2 else eye[:, :, None, None])
        if layer.bias is not None:
            layer.bias.zero_()


def _resize(src: tuple[int, int], dst: tuple[int, int]) -> nn.Module | None:
    if src == dst:
        return None
    if src[0] >= dst[0] and src[1] >= dst[1]:
        return nn.AdaptiveAvgPool2d(dst)
    return nn.Upsample(size=dst, mode="bilinear", align_corners=False)


def _map_layers(kind: str, c_in: int, c_out: int, tokens: bool) -> list[nn.Module]:
    """The channel mapping of an adapter: a 1x1 conv on maps, a linear layer on tokens."""
    def lin(i: int, o: int, bias: bool = True) -> nn.Module:
        return nn.Linear(i, o, bias=bias) if tokens else nn.Conv2d(i, o, 1, bias=bias)

    def norm(c: int) -> nn.Module:
        return nn.LayerNorm(c) if tokens else nn.BatchNorm2d(c)

    if kind == "linear":
        layer = lin(c_in, c_out)
        if c_in == c_out:
            _eye_(layer)
        return [layer]
    if kind == "linear_bn":
        layer = lin(c_in, c_out, bias=False)
        if c_in == c_out:
            _eye_(layer)
        return [layer, norm(c_out)]
    if kind == "mlp":
        hidden = max(c_in, c_out)
        act = nn.GELU() if tokens else nn.ReLU(inplace=True)
        return [lin(c_in, hidden), norm(hidden), act, lin(hidden, c_out)]
    raise ConfigError(f"adapter kind {kind!r} is unknown; use one of {list(KINDS)}")


def build_adapter(src: Sequence[int], dst: Sequence[int], kind: str = "linear",
                  where: str = "adapter") -> nn.Module:
    """A converter from feature shape ``src`` to ``dst`` (both without the batch dim).

    Shapes are (C, H, W) for feature maps or (L, D) for tokens.
    """
    src, dst = tuple(src), tuple(dst)
    if kind not in KINDS:
        raise ConfigError(f"adapter kind {kind!r} is unknown; use one of {list(KINDS)}")
    if kind == "identity_if_equal":
        # Equal widths but another spatial size still need a resize, hence "shapes".
        kind = "identity" if src == dst else "linear"
    if kind == "identity":
        if src != dst:
            raise ConfigError(f"{where}: adapter kind 'identity' needs equal feature shapes, "
                              f"got {src} -> {dst}; use model.adapter=identity_if_equal or linear")
        return nn.Identity()
    if len(src) != len(dst) or len(src) not in (2, 3):
        raise ConfigError(f"{where}: cannot convert a feature of shape {src} into {dst}; "
                          "both must be feature maps (C,H,W) or both tokens (L,D)")
    if len(src) == 2:
        if src[0] != dst[0]:
            raise ConfigError(f"{where}: token counts differ ({src[0]} vs {dst[0]}); use the "
                              "same image and patch size for teacher and student")
        return nn.Sequential(*_map_layers(kind, src[1], dst[1], tokens=True))
    resize = _resize(src[1:], dst[1:])
    layers = _map_layers(kind, src[0], dst[0], tokens=False)
    # Resize on the smaller side: pool before the channel map, upsample after it.
    if resize is None:
        return nn.Sequential(*layers)
    if isinstance(resize, nn.AdaptiveAvgPool2d):
        return nn.Sequential(resize, *layers)
    return nn.Sequential(*layers, resize)


@torch.no_grad()
def probe_shapes(net: BlockNet, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Feature shape (without batch) after every block but the last."""
    was_training = net.training
    net.eval()
    try:
        param = next(net.parameters())
        x = torch.zeros(1, *input_shape, device=param.device,
                        dtype=net.input_dtype or param.dtype)
        feats = net.forward_intermediates(x)[:-1]
    finally:
        net.train(was_training)
    return [tuple(f.shape[1:]) for f in feats]


class Adapters(nn.Module):
    """``to_student[i]`` and ``to_teacher[i]`` for every boundary i < N-1."""

    def __init__(self, teacher_shapes: Sequence[Sequence[int]],
                 student_shapes: Sequence[Sequence[int]], kind: str = "linear") -> None:
        super().__init__()
        if len(teacher_shapes) != len(student_shapes):
            raise ConfigError(f"teacher has {len(teacher_shapes) + 1} blocks but student has "
                              f"{len(student_shapes) + 1}; both must be cut into the same N")
        self.kind = kind
        self.teacher_shapes = [tuple(s) for s in teacher_shapes]
        self.student_shapes = [tuple(s) for s in student_shapes]
        self.to_student = nn.ModuleList(
            build_adapter(t, s, kind, f"boundary {i} to_student")
            for i, (t, s) in enumerate(zip(self.teacher_shapes, self.student_shapes)))
        self.to_teacher = nn.ModuleList(
            build_adapter(s, t, kind, f"boundary {i} to_teacher")
            for i, (t, s) in enumerate(zip(self.teacher_shapes, self.student_shapes)))

    @classmethod
    def between(cls, teacher: BlockNet, student: BlockNet, input_shape: Sequence[int],
                kind: str = "linear") -> Adapters:
        """Builds adapters for a teacher/student pair by probing their features."""
        if teacher.num_blocks != student.num_blocks:
            raise ConfigError(f"teacher has N={teacher.num_blocks} blocks but student has "
                              f"N={student.num_blocks}; configure both with the same number "
                              "of blocks")
        return cls(probe_shapes(teacher, input_shape), probe_shapes(student, input_shape), kind)

    def is_identity(self, boundary: int) -> bool:
        """True where both converters are plain identities (nothing to learn or reconstruct)."""
        return (isinstance(self.to_student[boundary], nn.Identity)
                and isinstance(self.to_teacher[boundary], nn.Identity))

    def __len__(self) -> int:
        return len(self.to_student)
