"""Storage precision of teacher shards: which tensors shrink, how, and how they come back.

A bundle may store its teacher blocks at ``fp16``, ``bf16`` or ``int8`` instead
of ``fp32``. Only large weight matrices and kernels shrink (``.weight`` tensors
of two or more dimensions with at least ``MIN_ELEMENTS`` elements); norms,
biases, embeddings, other 1-D tensors, small tensors and integer buffers stay
as they are, since they are numerically sensitive and too small to matter for
the bytes. ``int8`` is weight-only, symmetric and per output channel (dim 0):
the shard holds the int8 values under the weight's name and the fp32 scales,
shape (C_out,), under ``<name>.__scale``.

``quantise`` (used by ``pwl.export``) and ``dequantise`` (used by the runtime as
a shard is loaded) are inverse views of one stored form: the runtime computes
exactly ``int8 * scale`` in fp32 (bit-equal to torch's ``dequantize``), so the
accuracies measured at export hold for the loaded model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from pwl.errors import ConfigError

DTYPES = ("fp32", "fp16", "bf16", "int8")
SCALE_SUFFIX = ".__scale"
# Below this, a tensor's bytes are noise next to the header and per-channel scales.
MIN_ELEMENTS = 1024
_FLOAT = {"fp16": torch.float16, "bf16": torch.bfloat16}
_STORED_ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def check_dtype(dtype: str, key: str = "dtype") -> str:
    """Returns ``dtype`` if it is one of ``DTYPES``."""
    if dtype not in DTYPES:
        raise ConfigError(f"{key}={dtype!r} is unknown; use one of {'|'.join(DTYPES)}")
    return dtype


def shrinks(name: str, tensor: torch.Tensor) -> bool:
    """True if ``tensor`` is stored below fp32: a floating ``.weight`` with >= 2 dims and
    at least ``MIN_ELEMENTS`` elements (conv kernels, linear weights)."""
    return (tensor.is_floating_point() and tensor.dim() >= 2 and name.endswith("weight")
            and tensor.numel() >= MIN_ELEMENTS)


def _symmetric_scales(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 scales (C_out,) fp32 and zero points (all 0)."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                        qscheme=torch.per_channel_symmetric)
    observer(weight)
    scales, zero_points = observer.calculate_qparams()
    return scales.float(), zero_points


def quantise(tensors: Mapping[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The tensors of one shard as stored at ``dtype`` (fp32 tensors on the CPU in).

    Returns:
        ``fp16``/``bf16``: the shrinking tensors cast; ``int8``: each shrinking weight
        (C_out, ...) as int8 plus its scales (C_out,) fp32 under ``<name>.__scale``.
        Every other tensor as it came.

    Raises:
        ConfigError: an fp16 weight would overflow (naming it; use bf16 instead).
    """
    check_dtype(dtype)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            raise ConfigError(f"tensor {name!r} ends with {SCALE_SUFFIX!r}, which bundles "
                              "reserve for int8 scales; rename it in the model")
        if dtype == "fp32" or not shrinks(name, t):
            out[name] = t
        elif dtype == "int8":
            scales, zero_points = _symmetric_scales(t.float())
            with warnings.catch_warnings():
                # torch marks quantized tensors deprecated; the routine is still the
                # maintained reference for per-channel rounding and clamping.
                warnings.filterwarnings("ignore", message=r".*quantize_per_channel.*deprecated")
                q = torch.quantize_per_channel(t.float(), scales.double(), zero_points, 0,
                                               torch.qint8)
            out[name] = q.int_repr().contiguous()
            out[name + SCALE_SUFFIX] = scales.contiguous()
        else:
            stored = t.to(_FLOAT[dtype])
            if not torch.isfinite(stored).all():
                raise ConfigError(f"tensor {name!r} overflows {dtype}; export with dtype=bf16 "
                                  "or fp32")
            out[name] = stored.contiguous()
    return out


def dequantise(tensors: Mapping[str, torch.Tensor], dtype: str, source: object = "shard"
               ) -> dict[str, torch.Tensor]:
    """A shard's tensors as stored at ``dtype`` back as the model's fp32 tensors.

    ``dtype`` is the manifest's, the one source of truth: the tensors were already
    checked against ``stored_spec`` of it. int8 weights (C_out, ...) with their scales
    (C_out,) become ``int8 * scale`` in fp32; fp16/bf16 tensors become fp32 (exactly).
    """
    if dtype == "fp32":
        return dict(tensors)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            out[name] = t.float() * scale.view(-1, *([1] * (t.dim() - 1)))
        elif t.dtype in (torch.float16, torch.bfloat16):
            out[name] = t.float()
        else:
            out[name] = t
    return out


def stored_spec(name: str, tensor: torch.Tensor, dtype: str
                ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of what a shard stored at ``dtype`` holds for model tensor
    ``name`` (``tensor`` may be on the meta device)."""
    shape = tuple(tensor.shape)
    if dtype == "fp32" or not shrinks(name, tensor):
        return {name: (shape, tensor.dtype)}
    if dtype == "int8":
        return {name: (shape, torch.int8), name + SCALE_SUFFIX: ((shape[0],), torch.float32)}
    return {name: (shape, _FLOAT[dtype])}


def estimated_bytes(tensors: Mapping[str, torch.Tensor], dtype: str) -> int:
    """Bytes of the tensor data of one shard stored at ``dtype`` (without the file header)."""
    check_dtype(dtype)
    total = 0
    for name, t in tensors.items():
        if dtype != "fp32" and shrinks(name, t):
            total += t.numel() * _STORED_ELEMENT_BYTES[dtype]
            if dtype == "int8":
                total += t.shape[0] * 4
        else:
            total += t.numel() * t.element_size()
    return total
