"""LightningModules of the training phases (conf/phase/)."""

from pwl.lit.early_exit import EarlyExitModule
from pwl.lit.modules import DistillModule, TeacherModule

__all__ = ["DistillModule", "EarlyExitModule", "TeacherModule"]
