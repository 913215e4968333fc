"""Speed switches of a training run: memory layout and the precision of autocast.

``channels_last=true`` (the default) stores convolution weights, and so activations, as
NHWC, the layout oneDNN and cuDNN run fastest. ``trainer.precision=auto`` (the default
of ``trainer=cpu``) becomes Lightning's ``bf16-mixed`` where the hardware computes bf16
natively (a GPU that supports it; a CPU with AVX512-BF16 or AMX) and ``32-true``
elsewhere, where bf16 would be emulated and slower. Weights, optimizer state, saved files,
``pwl.evaluate`` and bundles stay fp32 either way; validation and the stage curves logged
while training run under the training autocast.

``reuse_cpu_memory`` asks glibc's allocator to keep freed memory in the process instead of
handing it back to the system after every large free. By default glibc returns the top of
its heap once more than a few megabytes are free there and maps large blocks afresh, so
each batch faults its feature maps in again. ``pwl.evaluate`` turns it on
(``reuse_cpu_memory=true``): evaluating every mask of the default experiment's model took
0.89-0.95x the wall time, with 0.22M instead of 1.05M page faults (four alternating
pairs of runs). Training does not: a distillation epoch of the default experiment and of
VGG faulted 1.2-2.5x less often but took as long (44.5 vs 43.1 s; 21.3 and 23.1 vs 20.4 and
21.1 s), so it was left out. The process keeps its peak memory.

``make bench-train`` measures each switch against plain fp32 (its ``--levers`` section);
``experiments/results/bench_train/`` has the numbers, and those of ``torch.compile``, which
was measured and did not pay.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
from torch import nn

AUTO = "auto"
FULL = "32-true"
BF16 = "bf16-mixed"


def use_channels_last(module: nn.Module) -> nn.Module:
    """Converts the 4-D parameters and buffers of ``module`` to NHWC in place."""
    return module.to(memory_format=torch.channels_last)


# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (blocks above it stay mapped
# one by one), and a trim threshold that in practice never trims.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 2**31 - 1


def reuse_cpu_memory() -> bool:
    """Keeps freed CPU memory in the process for the next allocation (glibc only).

    Sets glibc's mmap threshold to its maximum (32 MiB) and its trim threshold to 2 GiB.
    Freed blocks go back to the process heap instead of to the system, so later blocks
    of the same size cost no page faults. Setting either parameter turns glibc's own
    adjustment of them off, which is why both are set.

    Returns:
        True if the allocator took both settings; False elsewhere (macOS, Windows, musl),
        where it changes nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


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
