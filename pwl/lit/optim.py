"""Optimizer and schedule from an ``optim`` config (``conf/optim/*.yaml``).

The optimizer is a ``_partial_`` Hydra config called with parameter groups;
the schedule is a linear warm-up followed by cosine decay, stepped per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import hydra
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from pwl.errors import ConfigError


def build_optimizer(optim_cfg: Mapping[str, Any], groups: Iterable[dict]) -> torch.optim.Optimizer:
    """Instantiates ``optim_cfg.optimizer`` (a partial) on parameter groups.

    A group may carry ``lr_mult``; its learning rate becomes ``lr * lr_mult``.
    """
    if "optimizer" not in optim_cfg:
        raise ConfigError("optim.optimizer is missing; see conf/optim/sgd.yaml")
    factory = hydra.utils.instantiate(optim_cfg["optimizer"])
    base_lr = optim_cfg["optimizer"].get("lr")
    if base_lr is None:
        raise ConfigError("optim.optimizer.lr is missing")
    param_groups = []
    for g in groups:
        g = dict(g)
        mult = g.pop("lr_mult", 1.0)
        if g["params"]:
            param_groups.append({**g, "lr": base_lr * mult})
    return factory(param_groups)


def build_scheduler(optim_cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                    total_steps: int, steps_per_epoch: float) -> dict[str, Any]:
    """Linear warm-up for ``warmup_epochs`` then cosine decay to ``min_lr_ratio * lr``.

    ``scheduler.min_lr``, when set, is the floor itself for every group instead
    (the reference code's ``eta_min``).
    """
    sched = optim_cfg.get("scheduler") or {}
    warmup = int(round(sched.get("warmup_epochs", 0) * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    eta_min = sched.get("min_lr")
    if eta_min is None:
        eta_min = sched.get("min_lr_ratio", 0.0) * min(g["lr"] for g in optimizer.param_groups)
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=eta_min)
    if warmup > 0:
        warm = LinearLR(optimizer, start_factor=sched.get("warmup_start", 0.01),
                        total_iters=warmup)
        scheduler = SequentialLR(optimizer, [warm, cosine], milestones=[warmup])
    else:
        scheduler = cosine
    return {"scheduler": scheduler, "interval": "step"}
