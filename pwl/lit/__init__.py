"""LightningModules of the two training stages."""

from pwl.lit.modules import DistillModule, TeacherModule

__all__ = ["DistillModule", "TeacherModule"]
