"""Baseline: the teacher's first k blocks and a small exit head, the teacher frozen.

Beside PWL's prefix curve it asks whether a student plus swapped-in teacher blocks
answers better per byte than a truncated teacher. One exit head sits after each
boundary b (after teacher block b): the boundary feature pooled over positions
(kept per token for a language model), a LayerNorm and a linear layer to the
logits. All heads train together with cross-entropy; the teacher runs once per
step, in eval mode, without grad. Testing writes ``exits_<split>.csv`` into the
run directory: per k (teacher blocks loaded), the accuracy of exit k and the
bytes it needs (teacher blocks 0..k-1 at fp32 and its head), k = N being the
teacher itself.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from pwl.blocks import BlockNet
from pwl.lit.modules import _Optimized
from pwl.losses.terms import cross_entropy, per_prediction
from pwl.stages.costs import teacher_block_bytes
from pwl.weights import load_teacher

EXIT_COLUMNS = ("k", "accuracy", "bytes_loaded", "head_bytes")


class ExitHead(nn.Module):
    """Pools a boundary feature and maps it to logits: (B, C, H, W) and a classifier's
    (B, L, D) to (B, num_classes); a language model's (B, L, D) to (B, L, num_classes)."""

    def __init__(self, width: int, num_classes: int, per_token: bool) -> None:
        super().__init__()
        self.per_token = per_token
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.dim() == 4:
            feature = feature.mean(dim=(2, 3))
        elif not self.per_token:
            feature = feature.mean(dim=1)
        return self.fc(self.norm(feature))


def exit_heads(teacher: BlockNet, input_shape: list[int]) -> nn.ModuleList:
    """One head per boundary, sized by a probe of the teacher's features."""
    with torch.no_grad():
        probe = torch.zeros(1, *input_shape, dtype=torch.long
                            if teacher.task == "language_model" else torch.float)
        features = teacher.forward_intermediates(probe)[:-1]
    width = [f.shape[1] if f.dim() == 4 else f.shape[-1] for f in features]
    return nn.ModuleList(ExitHead(w, teacher.num_classes, teacher.task == "language_model")
                         for w in width)


class EarlyExitModule(_Optimized):
    """Trains an exit head after every teacher block but the last; the teacher is frozen.

    Args:
        model_cfg: the model config (its ``teacher`` and ``input_shape``).
        optim: the optim config.
        teacher: a teacher run directory or ``teacher.safetensors``.
    """

    def __init__(self, model_cfg: Mapping[str, Any], optim: Mapping[str, Any],
                 teacher: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = dict(model_cfg)
        self.optim_cfg = dict(optim)
        if teacher is None:
            from pwl.build import build_teacher

            self.teacher = build_teacher(self.model_cfg)
        else:
            self.teacher = load_teacher(teacher, self.model_cfg["teacher"])
        self.teacher.requires_grad_(False).eval()
        self.heads = exit_heads(self.teacher, list(self.model_cfg["input_shape"]))
        n, classes = self.teacher.num_blocks, self.teacher.num_classes
        self.val_acc = nn.ModuleList(MulticlassAccuracy(classes, average="micro")
                                     for _ in range(n))
        self.test_acc = nn.ModuleList(MulticlassAccuracy(classes, average="micro")
                                      for _ in range(n))

    def train(self, mode: bool = True) -> EarlyExitModule:
        super().train(mode)
        self.teacher.eval()
        return self

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.heads.parameters())}]

    def exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of exit k = 1..N (k teacher blocks; k = N is the teacher's head)."""
        with torch.no_grad():
            features = self.teacher.forward_intermediates(x)
        return [head(f) for head, f in zip(self.heads, features[:-1])] + [features[-1]]

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.exits(x)[:-1]
        loss = sum(cross_entropy(out, y) for out in logits) / len(logits)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _score(self, split: str, batch) -> None:
        x, y = batch
        metrics = self.val_acc if split == "val" else self.test_acc
        for metric, out in zip(metrics, self.exits(x)):
            metric.update(per_prediction(out), y.reshape(-1))

    def _log_epoch(self, split: str) -> list[float]:
        """Logs each exit's accuracy and their mean over the trained exits (the checkpoint
        monitor ``<split>/acc``); resets the metrics and returns the accuracies."""
        metrics = self.val_acc if split == "val" else self.test_acc
        accuracy = [m.compute().item() for m in metrics]
        for k, acc in enumerate(accuracy, start=1):
            self.log(f"{split}/exit{k}_acc", acc)
        self.log(f"{split}/acc", sum(accuracy[:-1]) / len(accuracy[:-1]),
                 prog_bar=split == "val")
        for m in metrics:
            m.reset()
        return accuracy

    def validation_step(self, batch, batch_idx):
        self._score("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch, batch_idx):
        self._score("test", batch)

    def on_test_epoch_end(self) -> None:
        accuracy = self._log_epoch("test")
        if self.trainer.is_global_zero:
            write_exits(self.exit_rows(accuracy),
                        Path(self.trainer.default_root_dir) / "exits_test.csv")

    def exit_rows(self, accuracy: list[float]) -> list[dict[str, float]]:
        """Per k: the accuracy of exit k and the bytes it needs at fp32."""
        blocks = teacher_block_bytes(self.teacher)
        rows = []
        for k, acc in enumerate(accuracy, start=1):
            head = (sum(p.numel() * p.element_size() for p in self.heads[k - 1].parameters())
                    if k < len(accuracy) else 0)
            rows.append({"k": k, "accuracy": acc, "bytes_loaded": sum(blocks[:k]) + head,
                         "head_bytes": head})
        return rows


def write_exits(rows: list[dict[str, float]], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EXIT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def area_per_byte(points: list[tuple[int, float]], total_bytes: int) -> float:
    """Mean accuracy over [0, ``total_bytes``] bytes loaded of a step curve: each point
    (bytes loaded, accuracy) holds until the next; nothing answers before the first."""
    points = sorted(points)
    area = 0.0
    for (start, acc), (end, _) in zip(points, [*points[1:], (total_bytes, 0.0)]):
        area += acc * max(0, min(end, total_bytes) - start)
    return area / total_bytes
