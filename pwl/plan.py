"""``python -m pwl.plan checkpoint=<run dir | .ckpt | bundle dir>``: the best loading order.

Finds the order of teacher blocks with the best area under the stage metric vs bytes
loaded (``pwl.stages.plans``: exact dynamic programming over block subsets; the largest
area under accuracy, the smallest under a language model's bits per character) on
a table of every mask measured on the validation split: ``stages=<csv>``
(from ``pwl.evaluate orders=[all] split=val``), else evaluated now. Writes
``plan.csv`` and ``plan.png`` (the plan next to prefix and suffix) into ``out``,
by default the checkpoint's run dir, where ``pwl.export loading_order=plan``
reads it.

``objective=auc_time`` scores the same curve against time at ``bandwidth``:
seconds are bytes / bandwidth, and the student's file comes first (accuracy 0
until it is in, the same for every order), so the order it picks is the
``auc_bytes`` order; only the reported areas change units and window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pwl.checkpoint import data_cfg_of, load_hybrid, run_dir_of
from pwl.cli import CONF_DIR, human_bytes, user_errors_as_one_line
from pwl.config import parse_bandwidth
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder
from pwl.precision import check_dtype
from pwl.runtime.bundle import is_bundle, read_manifest
from pwl.stages import (
    StageRow,
    accuracy_by_mask,
    evaluate_on_split,
    last_epoch,
    read_stages,
    student_bytes,
    teacher_block_bytes,
    write_evaluation,
)
from pwl.stages.files import metric_of_rows, value_by_mask
from pwl.stages.metrics import BPC
from pwl.stages.plans import PlanRow, best_order, plan_metric, plan_rows, plot_plan, write_plan

OBJECTIVES = ("auc_bytes", "auc_time")
ALL_MASKS_STEM = "stages_all_val"


def bundle_bytes(checkpoint: Path) -> tuple[list[int], int] | None:
    """A bundle's teacher file bytes per block and its student and adapters files' bytes;
    None for a run."""
    if not is_bundle(checkpoint):
        return None
    manifest = read_manifest(checkpoint)
    return manifest.block_bytes(), manifest.side_bytes()


def evaluate_all_masks(cfg: DictConfig, checkpoint: Path, hybrid: HybridNet,
                       model_cfg: dict[str, Any], out: Path, console: Console
                       ) -> list[StageRow]:
    """Every mask measured on the validation split, also written as ``ALL_MASKS_STEM``."""
    data_cfg, source = data_cfg_of(cfg.get("data"), checkpoint)
    console.print(f"evaluating every mask of {checkpoint} on the val split", soft_wrap=True)
    result = evaluate_on_split(hybrid, data_cfg, "val", "all", saved_from=source,
                               batch_size=cfg.batch_size, limit_batches=cfg.limit_batches,
                               device=cfg.device, input_shape=model_cfg["input_shape"],
                               progress=True)
    bundle = bundle_bytes(checkpoint)
    write_evaluation(result, hybrid, out, ALL_MASKS_STEM,
                     {"split": "val", "checkpoint": str(checkpoint),
                      "model": model_cfg.get("name")}, bundle[0] if bundle else None)
    return result.rows


def stage_table(cfg: DictConfig, checkpoint: Path, hybrid: HybridNet,
                model_cfg: dict[str, Any], out: Path, console: Console
                ) -> tuple[list[StageRow], str]:
    """Stage rows of every mask from ``stages=<csv>``, or from evaluating them on val now."""
    if not cfg.stages:
        return (evaluate_all_masks(cfg, checkpoint, hybrid, model_cfg, out, console),
                str(out / f"{ALL_MASKS_STEM}.csv"))
    path = Path(cfg.stages).expanduser()
    if not path.is_file():
        raise ConfigError(f"stages={cfg.stages}: {path} does not exist; give an all-mask "
                          "stages CSV (pwl.evaluate orders=[all] split=val) or null")
    meta = path.with_suffix(".json")
    split = json.loads(meta.read_text()).get("split") if meta.is_file() else None
    if split == "test":
        console.print(f"[yellow]note: {path} was measured on the test split; a plan chosen "
                      "on it overstates its test accuracy (use split=val)[/yellow]")
    return last_epoch(read_stages(path)), str(path)


def plan(cfg: DictConfig) -> list[PlanRow]:
    """Finds, prints and writes the plan that ``conf/plan.yaml`` describes; returns its rows."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint is not set; pass checkpoint=<distill run dir, .ckpt or "
                          "bundle dir>")
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective!r} is unknown; use {' or '.join(OBJECTIVES)}")
    bandwidth = parse_bandwidth(cfg.bandwidth)
    if cfg.objective == "auc_time" and bandwidth is None:
        raise ConfigError("objective=auc_time needs a bandwidth; pass bandwidth=10MB (or "
                          "another rate)")
    checkpoint = Path(cfg.checkpoint).expanduser()
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint={checkpoint} does not exist; pass a distill run "
                              "directory, a Lightning .ckpt or a bundle directory")
    out = Path(cfg.out).expanduser() if cfg.out else run_dir_of(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    hybrid, model_cfg = load_hybrid(checkpoint)
    n = hybrid.num_blocks
    bundle = bundle_bytes(checkpoint)
    if cfg.dtype is None and bundle is not None:
        block_bytes, bytes_source = bundle[0], "the bundle's teacher files"
    else:
        dtype = check_dtype(cfg.dtype or "fp32")
        block_bytes = teacher_block_bytes(hybrid.teacher, dtype)
        bytes_source = f"estimated at {dtype}"
    side_bytes = bundle[1] if bundle is not None else student_bytes(hybrid)
    table, table_source = stage_table(cfg, checkpoint, hybrid, model_cfg, out, console)
    metric = metric_of_rows(table)
    accuracy = accuracy_by_mask(table)
    bpc = value_by_mask(table, BPC) if metric == BPC else None

    plan, _ = best_order(bpc if bpc is not None else accuracy, block_bytes, metric)
    rows = plan_rows(plan, accuracy, block_bytes, bpc)
    for name in ("prefix", "suffix"):
        order = LoadingOrder.parse(name, n)
        if all(m in accuracy for m in order.masks[:-1]):
            rows += plan_rows(order, accuracy, block_bytes, bpc)
    paths = [write_plan(rows, out / "plan.csv"), plot_plan(rows, out / "plan.png")]
    print_plan(rows, cfg.objective, bandwidth, side_bytes, console)
    console.print(f"{metric.label}: {table_source}; block bytes: {bytes_source} "
                  f"({', '.join(human_bytes(b) for b in block_bytes)})", soft_wrap=True)
    console.print("wrote: " + "  ".join(str(p) for p in paths), soft_wrap=True)
    return rows


def print_plan(rows: list[PlanRow], objective: str, bandwidth: float | None,
               side_bytes: int, console: Console) -> None:
    """One line per order: its block order, area and mean of the plan's metric (accuracy, or
    bits per character), and the ratio to prefix."""
    metric = plan_metric(rows)
    orders = list(dict.fromkeys(r.order for r in rows))
    first = {o: next(r for r in rows if r.order == o) for o in orders}
    total = max(r.bytes_loaded for r in rows)
    if objective == "auc_time":
        # Seconds at the bandwidth; the window starts when the student file starts loading
        # (accuracy 0 until it is in). Bits per character have no value of "no answer", so
        # their window starts at the student's first answer.
        window = (side_bytes * metric.higher_is_better + total) / bandwidth
        areas = {o: first[o].mean(metric) * total / bandwidth for o in orders}
        means = {o: areas[o] / window for o in orders}
        unit = f"{metric.name} x s"
    else:
        areas = {o: first[o].mean(metric) * total / 1e6 for o in orders}
        means = {o: first[o].mean(metric) for o in orders}
        unit = f"{metric.name} x MB"
    table = Table(title=f"loading orders ({objective})")
    for col in ("order", "blocks", f"area ({unit})", f"mean {metric.name}", "vs prefix"):
        table.add_column(col, justify="left" if col in ("order", "blocks") else "right")
    for o in orders:
        blocks = " ".join(str(r.block) for r in rows if r.order == o and r.block >= 0)
        ratio = f"{areas[o] / areas['prefix']:.4f}" if "prefix" in areas else "-"
        table.add_row(o, blocks, f"{areas[o]:.4f}", f"{means[o]:.4f}", ratio)
    console.print(table)


@user_errors_as_one_line
def run(cfg: DictConfig) -> list[PlanRow]:
    """Plans; user errors exit 2 in one line."""
    return plan(cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="plan")
def main(cfg: DictConfig) -> None:
    """Console-script entry point (``pwl-plan``)."""
    run(cfg)


if __name__ == "__main__":
    main()
