"""Lightning callbacks of pwl."""

from pwl.callbacks.stage_eval import StageEval

__all__ = ["StageEval"]
