"""LightningModules of the two training phases (conf/phase/)."""

from pwl.lit.modules import DistillModule, TeacherModule

__all__ = ["DistillModule", "TeacherModule"]
