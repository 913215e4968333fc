"""Speed switches of a training run: memory layout and the precision of autocast.

``channels_last=true`` (the default) stores convolution weights, and so activations, as
NHWC, the layout oneDNN and cuDNN run fastest. ``trainer.precision=auto`` (the default
of ``trainer=cpu``) becomes Lightning's ``bf16-mixed`` where the hardware computes bf16
natively (a GPU that supports it; a CPU with AVX512-BF16 or AMX) and ``32-true``
elsewhere, where bf16 would be emulated and slower. Weights, optimizer state, saved files,
``pwl.evaluate`` and bundles stay fp32 either way; validation and the stage curves logged
while training run under the training autocast.

Both stay because they pay (DESIGN.md's rule for a speed mechanism); the measurements are
in ``experiments/results/bench_load/README.md`` ("Verdicts: training side").
"""

from __future__ import annotations

import torch
from torch import nn

AUTO = "auto"
FULL = "32-true"
BF16 = "bf16-mixed"


def use_channels_last(module: nn.Module) -> nn.Module:
    """Converts the 4-D parameters and buffers of ``module`` to NHWC in place."""
    return module.to(memory_format=torch.channels_last)


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def native_bf16(accelerator: str) -> tuple[bool, str]:
    """Whether ``accelerator`` (a Lightning accelerator name) runs bf16 natively, and why."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, "this GPU supports bf16"
        return False, "no GPU with bf16 support"
    if accelerator in ("cpu", "auto"):
        if cpu_has_native_bf16():
            return True, "this CPU has AVX512-BF16/AMX"
        return False, "this CPU has no AVX512-BF16/AMX, so bf16 would be emulated"
    return False, f"accelerator {accelerator!r}"


def resolve_precision(precision: str | int, accelerator: str) -> tuple[str | int, str | None]:
    """Lightning's precision for ``trainer.precision`` (``auto`` resolved; others as given).

    Returns:
        the precision and, for ``auto``, a line saying what it chose and why.
    """
    if precision != AUTO:
        return precision, None
    native, why = native_bf16(str(accelerator))
    chosen = BF16 if native else FULL
    return chosen, f"trainer.precision=auto -> {chosen} ({why})"
