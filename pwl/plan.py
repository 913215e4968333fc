"""``python -m pwl.plan checkpoint=<run dir | .ckpt | bundle dir>``: the best loading order.

Finds the order of teacher blocks with the largest area under accuracy vs bytes
loaded (``pwl.stages.plans``: exact dynamic programming over block subsets) on
an accuracy table of every mask measured on the validation split: ``stages=<csv>``
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

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pwl.checkpoint import load_hybrid, run_dir_of
from pwl.cli import CONF_DIR, human_bytes, user_errors_as_one_line
from pwl.config import parse_bandwidth
from pwl.errors import CheckpointError, ConfigError
from pwl.evaluate import bundle_block_bytes, evaluate
from pwl.hybrid import HybridNet
from pwl.masks import masks_for_order
from pwl.precision import check_dtype
from pwl.runtime.manifest import MANIFEST, read_manifest, side_files
from pwl.stages import accuracy_by_mask, last_epoch, read_stages, teacher_block_bytes
from pwl.stages.plans import PLAN_ORDER, PlanRow, best_order, plan_rows, plot_plan, write_plan

OBJECTIVES = ("auc_bytes", "auc_time")
ALL_MASKS_STEM = "stages_all_val"


def block_bytes_of(checkpoint: Path, hybrid: HybridNet, dtype: str | None) -> tuple[list[int], str]:
    """Bytes per teacher block and what they are: the bundle's files, or an estimate."""
    if dtype is None:
        measured = bundle_block_bytes(checkpoint)
        if measured is not None:
            return measured, "the bundle's teacher files"
        dtype = "fp32"
    return teacher_block_bytes(hybrid.teacher, check_dtype(dtype)), f"estimated at {dtype}"


def student_file_bytes(checkpoint: Path, hybrid: HybridNet) -> int:
    """Bytes loaded besides the teacher's: the bundle's student and adapters files, or
    student + adapters at fp32."""
    if checkpoint.is_dir() and (checkpoint / MANIFEST).is_file():
        manifest = read_manifest(checkpoint)
        return sum(int(manifest["files"][rel]["bytes"]) for rel in side_files(manifest))
    return sum(t.numel() * t.element_size()
               for m in (hybrid.student, hybrid.adapters)
               for t in (*m.parameters(), *m.buffers()))


def accuracy_table(cfg: DictConfig, checkpoint: Path, out: Path, console: Console
                   ) -> tuple[dict[str, float], str]:
    """Accuracy per mask from ``stages=<csv>``, or from evaluating every mask on val now."""
    if cfg.stages:
        path = Path(cfg.stages).expanduser()
        if not path.is_file():
            raise ConfigError(f"stages={cfg.stages}: {path} does not exist; give an all-mask "
                              "stages CSV (pwl.evaluate orders=[all] split=val) or null")
        meta = path.with_suffix(".json")
        split = json.loads(meta.read_text()).get("split") if meta.is_file() else None
        if split == "test":
            console.print(f"[yellow]note: {path} was measured on the test split; a plan chosen "
                          "on it overstates its test accuracy (use split=val)[/yellow]")
        return accuracy_by_mask(last_epoch(read_stages(path))), str(path)
    ecfg = OmegaConf.create({"checkpoint": str(checkpoint), "orders": ["all"], "split": "val",
                             "device": cfg.device, "batch_size": cfg.batch_size,
                             "limit_batches": cfg.limit_batches, "out": str(out),
                             "data": cfg.get("data")})
    result = evaluate(ecfg, stem=ALL_MASKS_STEM)
    return accuracy_by_mask(result.rows), str(out / f"{ALL_MASKS_STEM}.csv")


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
    hybrid, _ = load_hybrid(checkpoint)
    n = hybrid.num_blocks
    block_bytes, bytes_source = block_bytes_of(checkpoint, hybrid, cfg.dtype)
    accuracy, table_source = accuracy_table(cfg, checkpoint, out, console)

    masks, _ = best_order(accuracy, block_bytes)
    rows = plan_rows(PLAN_ORDER, masks, accuracy, block_bytes)
    for order in ("prefix", "suffix"):
        order_masks = masks_for_order(order, n)
        if all(m in accuracy for m in order_masks[:-1]):
            rows += plan_rows(order, order_masks, accuracy, block_bytes)
    paths = [write_plan(rows, out / "plan.csv"), plot_plan(rows, out / "plan.png")]
    print_plan(rows, cfg.objective, bandwidth, student_file_bytes(checkpoint, hybrid), console)
    console.print(f"accuracies: {table_source}; block bytes: {bytes_source} "
                  f"({', '.join(human_bytes(b) for b in block_bytes)})", soft_wrap=True)
    console.print("wrote: " + "  ".join(str(p) for p in paths), soft_wrap=True)
    return rows


def print_plan(rows: list[PlanRow], objective: str, bandwidth: float | None,
               student_bytes: int, console: Console) -> None:
    """One line per order: its block order, area and mean accuracy, and the ratio to prefix."""
    orders = list(dict.fromkeys(r.order for r in rows))
    first = {o: next(r for r in rows if r.order == o) for o in orders}
    total = max(r.bytes_loaded for r in rows)
    if objective == "auc_time":
        # Seconds at the bandwidth; the window starts when the student file starts loading.
        window = (student_bytes + total) / bandwidth
        areas = {o: first[o].mean_accuracy * total / bandwidth for o in orders}
        means = {o: areas[o] / window for o in orders}
        unit = "accuracy x s"
    else:
        areas = {o: first[o].mean_accuracy * total / 1e6 for o in orders}
        means = {o: first[o].mean_accuracy for o in orders}
        unit = "accuracy x MB"
    table = Table(title=f"loading orders ({objective})")
    for col in ("order", "blocks", f"area ({unit})", "mean accuracy", "vs prefix"):
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
