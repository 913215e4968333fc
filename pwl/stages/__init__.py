"""Loading stages: the shared-prefix evaluator, what a mask costs, and the stage files.

``pwl.stages.evaluator`` measures the accuracy of many masks at once;
``pwl.stages.measure`` runs it on a data split (``evaluate_on_split``, the call
every entry point shares); ``pwl.stages.costs`` gives the bytes of a mask's parts;
``pwl.stages.files`` writes and reads the **contract** ``stages.csv``.
"""

from pwl.stages.costs import mask_costs, student_bytes, teacher_block_bytes
from pwl.stages.evaluator import StageEvaluator, evaluate_stages
from pwl.stages.files import (
    COLUMNS,
    MaskBytes,
    StageResult,
    StageRow,
    accuracy_by_mask,
    last_epoch,
    read_stages,
    write_masks,
    write_stages,
)
from pwl.stages.measure import evaluate_on_split, write_evaluation

__all__ = [
    "COLUMNS",
    "MaskBytes",
    "StageEvaluator",
    "StageResult",
    "StageRow",
    "accuracy_by_mask",
    "evaluate_on_split",
    "evaluate_stages",
    "last_epoch",
    "mask_costs",
    "read_stages",
    "student_bytes",
    "teacher_block_bytes",
    "write_evaluation",
    "write_masks",
    "write_stages",
]
