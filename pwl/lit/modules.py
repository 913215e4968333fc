"""LightningModules: a teacher trained from scratch, and student + adapters distilled from it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from pwl.build import build_hybrid, build_teacher
from pwl.errors import ConfigError
from pwl.lit.optim import build_optimizer, build_scheduler
from pwl.losses import DistillOutputs, build_loss
from pwl.losses.terms import cross_entropy, per_prediction
from pwl.weights import load_student, load_teacher


def adapter_lr_mult(loss: Mapping[str, Any], optim: Mapping[str, Any]) -> float:
    """The adapters' learning-rate factor: ``loss.adapter_lr_mult`` if set, else the optim's.

    The loss preset wins because the factor is part of a recipe (``loss=paper`` trains its
    adapters at 0.2x), while an optim preset is shared by recipes and by the teacher phase.
    """
    mult = loss.get("adapter_lr_mult")
    key = "loss.adapter_lr_mult"
    if mult is None:
        mult, key = optim.get("adapter_lr_mult", 1.0), "optim.adapter_lr_mult"
    if isinstance(mult, bool) or not isinstance(mult, int | float) or mult < 0:
        raise ConfigError(f"{key}={mult!r} must be a number >= 0 (1 trains the adapters at lr)")
    return float(mult)


class _Optimized(L.LightningModule):
    """Shared optimizer/schedule wiring from the ``optim`` config."""

    optim_cfg: dict[str, Any]

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim_cfg, self.param_groups())
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(self.trainer.max_epochs or 1, 1)
        return {"optimizer": optimizer,
                "lr_scheduler": build_scheduler(self.optim_cfg, optimizer, total, per_epoch)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores weights, optimizer and loops but not the random streams. Saved
        # with the checkpoint, they make a run resumed from an epoch's end draw the same
        # shuffles, augmentations and mixed masks as a run that never stopped.
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])


class _Scored(_Optimized):
    """Validation and test scores of a network's logits: ``<split>/acc`` (next-token accuracy
    for a language model) and, for a language model, ``<split>/bpc`` (bits per character)."""

    def _setup_scores(self, num_classes: int, task: str) -> None:
        self.is_lm = task == "language_model"
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def _score(self, split: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        metric = self.val_acc if split == "val" else self.test_acc
        metric(per_prediction(logits), y.reshape(-1))
        self.log(f"{split}/acc", metric, prog_bar=split == "val")
        if self.is_lm:
            bpc = cross_entropy(logits.float(), y) / math.log(2)
            self.log(f"{split}/bpc", bpc, prog_bar=split == "val", batch_size=y.numel())


class TeacherModule(_Scored):
    """Trains the teacher BlockNet with cross-entropy.

    Args:
        model_cfg: the model config (only its ``teacher`` entry is built).
        optim: the optim config (optimizer partial, scheduler, adapter_lr_mult).
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, model_cfg: Mapping[str, Any], optim: Mapping[str, Any],
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = dict(model_cfg)
        self.optim_cfg = dict(optim)
        self.net = build_teacher(self.model_cfg)
        num_classes = self.net.num_classes
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self._setup_scores(num_classes, self.net.task)

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.net.parameters())}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = cross_entropy(logits, y, self.label_smoothing)
        self.train_acc(per_prediction(logits), y.reshape(-1))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._score("val", self.net(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self._score("test", self.net(x), y)


class DistillModule(_Scored):
    """Trains the student and the adapters; the teacher is frozen.

    Each step runs the teacher once (no grad, eval mode) and the student once,
    keeping every block's output; the loss plugins read those, and mixed
    paths start from the cached activation at their first switch.

    Args:
        model_cfg: the model config (teacher, student, adapter, input_shape).
        loss: the loss config (``terms``: name -> weight and plugin options; an optional
            ``adapter_lr_mult`` that, when set, replaces the optim config's, so that a
            recipe such as ``loss=paper`` carries its adapters' learning rate).
        optim: the optim config; ``adapter_lr_mult`` scales the adapters' LR.
        teacher: a teacher run directory or ``teacher.safetensors``. Leave it
            out only when weights come from a checkpoint.
        student_from: a finished distill run (e.g. a KD baseline's) whose student is
            loaded and frozen (eval mode, no grad): only the adapters train, the
            *post-hoc adapters* baseline (``loss=posthoc``).
    """

    def __init__(self, model_cfg: Mapping[str, Any], loss: Mapping[str, Any],
                 optim: Mapping[str, Any], teacher: str | None = None,
                 student_from: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = dict(model_cfg)
        self.optim_cfg = dict(optim)
        teacher_net = load_teacher(teacher, self.model_cfg["teacher"]) if teacher else None
        self.hybrid = build_hybrid(self.model_cfg, teacher=teacher_net)
        self.student_frozen = student_from is not None
        if self.student_frozen:
            load_student(self.hybrid, student_from)
            # Lightning keeps the modes modules are built in; train() below keeps it so.
            self.hybrid.student.requires_grad_(False).eval()
        self.loss = build_loss(loss.get("terms", {}))
        self.adapter_lr_mult = adapter_lr_mult(loss, self.optim_cfg)
        self._setup_scores(self.hybrid.student.num_classes, self.hybrid.student.task)

    def param_groups(self) -> list[dict]:
        adapters = {"params": list(self.hybrid.adapters.parameters()),
                    "lr_mult": self.adapter_lr_mult}
        if self.student_frozen:
            return [adapters]
        return [{"params": list(self.hybrid.student.parameters())}, adapters]

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.student_frozen:  # BatchNorm statistics stay the finished student's
            self.hybrid.student.eval()
        return self

    def on_fit_start(self) -> None:
        self.print(self.loss.describe(self.hybrid))
        self.print(f"adapters' learning rate: {self.adapter_lr_mult:g} x lr")

    def forward(self, x: torch.Tensor, mask: str | None = None) -> torch.Tensor:
        return self.hybrid(x, mask or "S" * self.hybrid.num_blocks)

    def distill_step(self, batch: tuple[torch.Tensor, torch.Tensor],
                     outputs: type[DistillOutputs] = DistillOutputs,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], DistillOutputs]:
        """The distillation loss of one batch: the teacher runs once (no grad, eval mode)
        and the student once, and the loss terms read their block outputs.

        Args:
            batch: images (B, C, H, W) and labels (B,), or tokens and next tokens (B, L).
            outputs: the class that holds the step's block outputs (a subclass may note or
                recompute the mixed paths, as experiments/bench_train.py does).

        Returns:
            the weighted total (with grad), each active term's value (detached) and the
            step's outputs.
        """
        x, y = batch
        with torch.no_grad():
            teacher_feats = self.hybrid.teacher.forward_intermediates(x)
        student_feats = self.hybrid.student.forward_intermediates(x)
        step = outputs(x, y, self.hybrid, teacher_feats, student_feats)
        total, terms = self.loss(step)
        return total, terms, step

    def training_step(self, batch, batch_idx):
        total, terms, _ = self.distill_step(batch)
        if not torch.isfinite(total):
            # Stop before the optimizer step so the weights (and last.ckpt) stay usable.
            bad = [name for name, v in terms.items() if not torch.isfinite(v)]
            raise FloatingPointError(
                f"distillation loss is not finite at step {self.global_step} (terms {bad}); "
                "lower optim.optimizer.lr or trainer.gradient_clip_val, then resume with "
                "ckpt_path=<run>/checkpoints/last.ckpt")
        self.log("train/loss", total, prog_bar=True)
        for name, value in terms.items():
            self.log(f"train/loss/{name}", value)
        return total

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._score("val", self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self._score("test", self(x), y)
