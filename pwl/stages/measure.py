"""Evaluating a hybrid on a data split: the one call every entry point shares.

``evaluate_on_split`` builds (or takes) the data module, runs the split's batches
through the shared-prefix evaluator on a device and returns the ``StageResult``;
``pwl.evaluate``, ``pwl.plan``, ``pwl.export`` and ``pwl.serve`` all measure
stages through it. ``write_evaluation`` records one evaluation with its costs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from pwl.data.datamodule import DataModule
from pwl.data.registry import build_datamodule
from pwl.errors import ConfigError
from pwl.hybrid import HybridNet
from pwl.stages.costs import mask_costs
from pwl.stages.evaluator import evaluate_stages
from pwl.stages.files import (
    StageResult,
    accuracy_by_mask,
    value_by_mask,
    write_masks,
    write_stages,
)
from pwl.stages.metrics import BPC

SPLITS = ("test", "val")


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (cuda when there is one), ``cpu`` or ``cuda`` as a device."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def evaluate_on_split(hybrid: HybridNet, data: Mapping[str, Any] | DataModule, split: str,
                      orders: Any, *, saved_from: str | Path | None = None,
                      batch_size: int | None = None, limit_batches: int | None = None,
                      device: str | torch.device | None = None,
                      input_shape: Sequence[int] | None = None,
                      flip_pairs: Sequence[tuple[str, str]] = (), epoch: int = 0,
                      progress: bool = False) -> StageResult:
    """The stages of ``orders`` measured on ``split`` of ``data``.

    Args:
        hybrid: the model; moved to ``device`` (in place) when one is given.
        data: a data config (``conf/data``), built with ``build_datamodule``, or a data
            module already built.
        split: ``test`` or ``val``.
        orders: loading orders and/or masks, as ``StageEvaluator`` takes them.
        saved_from: the file a stored data config was read from (see ``build_datamodule``);
            None for the user's own config.
        batch_size: the evaluation batch size (default: the data config's).
        limit_batches: evaluate only the first batches (quick checks).
        device: ``auto``, ``cpu``, ``cuda`` or a device; None: where the hybrid is.
        input_shape: the model's input, (C, H, W) or a language model's (L,); data giving
            other inputs is refused.
        flip_pairs: (mask a, mask b) pairs whose right-to-wrong flips are counted.
        epoch: the ``epoch`` of the rows.
        progress: show a transient progress bar.

    Raises:
        ConfigError: an unknown split or device, or images the model does not take.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is unknown; use test or val")
    if isinstance(data, DataModule):
        dm = data
        dm.setup()
    else:
        dm = build_datamodule(data, saved_from=saved_from,
                              **({"eval_batch_size": batch_size} if batch_size else {}))
    if input_shape is not None and list(dm.input_shape) != list(input_shape):
        what = "windows of" if len(input_shape) == 1 else "images of shape"
        raise ConfigError(f"the data gives {what} {list(dm.input_shape)} but the model "
                          f"expects {list(input_shape)}; pass the data config it was trained "
                          "with (data=<name>)")
    if device is not None:
        hybrid.to(resolve_device(device))
    on = next(hybrid.parameters()).device
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    total = min(len(loader), limit_batches) if limit_batches else len(loader)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items = (track(loader, description=f"stages ({split})", total=total, transient=True)
                 if progress else loader)
        for b, (images, labels) in enumerate(items):
            if b >= total:
                break
            yield dm.preprocess(images.to(on), train=False), labels.to(on)

    return evaluate_stages(hybrid, batches(), orders, epoch=epoch, flip_pairs=flip_pairs)


def write_evaluation(result: StageResult, hybrid: HybridNet, out_dir: str | Path,
                     stem: str = "stages", meta: Mapping[str, Any] | None = None,
                     bundle_block_bytes: Sequence[int] | None = None) -> dict[str, Path]:
    """Writes ``<stem>.csv|json|png`` and ``masks<suffix>.csv`` (each mask's accuracy and
    bytes, ``mask_costs``; ``<suffix>`` is what follows ``stages`` in ``stem``).

    Returns:
        The paths by kind: ``csv``, ``json``, ``png`` and ``masks``.
    """
    out_dir = Path(out_dir)
    paths = write_stages([result], out_dir, stem=stem, meta=meta)
    bpc = value_by_mask(result.rows, BPC) if result.headline == BPC else None
    costs = mask_costs(hybrid, accuracy_by_mask(result.rows), bundle_block_bytes, bpc)
    paths["masks"] = write_masks(costs, out_dir / f"masks{stem.removeprefix('stages')}.csv")
    return paths
