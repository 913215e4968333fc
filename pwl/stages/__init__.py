"""Loading stages: the shared-prefix evaluator and the stage files it writes.

``pwl.stages.evaluator`` measures the accuracy of many masks at once;
``pwl.stages.files`` writes and reads the **contract** ``stages.csv``;
``pwl.stages.measure`` evaluates a hybrid on a data split (``evaluate_on_split``).
"""

from pwl.stages.evaluator import (
    K_ORDERS,
    StageEvaluator,
    StageResult,
    evaluate_stages,
    mask_bytes,
    mask_bytes_loaded,
    mask_teacher_params,
    prefix_auc,
    student_bytes_used,
    teacher_block_bytes,
)
from pwl.stages.files import (
    COLUMNS,
    MaskBytes,
    StageRow,
    accuracy_by_mask,
    last_epoch,
    plot_stages,
    read_stages,
    write_csv,
    write_json,
    write_masks,
    write_stages,
)
from pwl.stages.measure import evaluate_on_split, resolve_device

__all__ = [
    "COLUMNS",
    "K_ORDERS",
    "MaskBytes",
    "StageEvaluator",
    "StageResult",
    "StageRow",
    "accuracy_by_mask",
    "evaluate_on_split",
    "evaluate_stages",
    "last_epoch",
    "mask_bytes",
    "mask_bytes_loaded",
    "mask_teacher_params",
    "plot_stages",
    "prefix_auc",
    "read_stages",
    "resolve_device",
    "student_bytes_used",
    "teacher_block_bytes",
    "write_csv",
    "write_json",
    "write_masks",
    "write_stages",
]
