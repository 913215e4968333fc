"""What a mask costs: the bytes and parameters of the parts it runs.

``pwl.masks.bytes_loaded`` turns per-block teacher bytes into a mask's bytes;
the per-block bytes come from a model at a storage precision
(``teacher_block_bytes``) or from a bundle's files (its manifest).
``student_bytes`` counts what a mask still runs of the student's files, and
``mask_costs`` puts both in the rows of ``masks.csv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from pwl.blocks import BlockNet
from pwl.hybrid import HybridNet
from pwl.masks import bytes_loaded, parts_needed, teacher_blocks
from pwl.precision import estimated_bytes
from pwl.stages.files import MaskBytes

COST_DTYPES = ("fp32", "fp16", "int8")


def _tensor_bytes(modules: Iterable[nn.Module]) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(),
                                                                      *m.buffers()))


def teacher_block_bytes(teacher: BlockNet, dtype: str = "fp32") -> list[int]:
    """Bytes of each teacher block's tensors stored at ``dtype`` (``pwl.precision``), block 0
    first; at fp32, the bytes they hold. A bundle's files add a small header each."""
    return [sum(estimated_bytes(dict((*m.named_parameters(), *m.named_buffers())), dtype)
                for m in teacher.unit_modules(i)) for i in range(teacher.num_blocks)]


def student_bytes(hybrid: HybridNet, mask: str | None = None) -> int:
    """Bytes of the student blocks and adapters ``mask`` runs (what remains of the student's
    files once everything else is freed); all of them when ``mask`` is None."""
    if mask is None:
        return _tensor_bytes([hybrid.student, hybrid.adapters])
    _, student, adapters = parts_needed([mask])
    return _tensor_bytes([*(m for i in student for m in hybrid.student.unit_modules(i)),
                          *(getattr(hybrid.adapters, kind)[b] for kind, b in adapters)])


def mask_teacher_params(hybrid: HybridNet, mask: str) -> int:
    """Parameters of the teacher units that ``mask`` runs."""
    return sum(hybrid.teacher.unit_num_params(i) for i, who in enumerate(mask) if who == "T")


def mask_costs(hybrid: HybridNet, accuracy: Mapping[str, float],
               bundle_block_bytes: Sequence[int] | None = None,
               bpc: Mapping[str, float] | None = None) -> list[MaskBytes]:
    """Rows of ``masks.csv``: per mask, its accuracy, the student bytes it still runs and its
    teacher bytes at every precision (estimated), and in the bundle's files when
    ``bundle_block_bytes`` (one size per teacher file) is given; ``bpc`` per mask for a
    language model."""
    per_dtype = {dtype: teacher_block_bytes(hybrid.teacher, dtype) for dtype in COST_DTYPES}
    return [MaskBytes(mask=mask, k=teacher_blocks(mask), accuracy=acc,
                      student_bytes=student_bytes(hybrid, mask),
                      teacher_bytes_fp32=bytes_loaded(mask, per_dtype["fp32"]),
                      teacher_bytes_fp16=bytes_loaded(mask, per_dtype["fp16"]),
                      teacher_bytes_int8=bytes_loaded(mask, per_dtype["int8"]),
                      teacher_bytes_bundle=(bytes_loaded(mask, bundle_block_bytes)
                                            if bundle_block_bytes is not None else None),
                      bpc=bpc[mask] if bpc is not None else None)
            for mask, acc in accuracy.items()]
