"""``python -m pwl.evaluate checkpoint=<run dir | .ckpt | bundle dir or URL>``: the stage curve.

Evaluates the loading orders of a trained hybrid on the test split (``orders=[all]``:
every mask, on the validation split, for choosing a loading plan) with the
shared-prefix evaluator and writes ``stages.csv``, ``stages.json``, ``stages.png``
and ``masks.csv`` (each mask's bytes) into the Hydra run directory (or ``out=``).

The data config is the one the model was trained with when the run saved it
(``<run dir>/.hydra/config.yaml`` or a bundle manifest's ``data``) unless
``data=<name>`` is given.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pwl.checkpoint import data_cfg_of, load_hybrid
from pwl.cli import CONF_DIR, user_errors_as_one_line
from pwl.errors import CheckpointError, ConfigError
from pwl.masks import parse_orders
from pwl.runtime.bundle import is_bundle, read_manifest
from pwl.runtime.sources import is_url
from pwl.schemas import check_app_config
from pwl.stages import StageResult, evaluate_on_split, write_evaluation
from pwl.stages.metrics import BPC


def print_result(result: StageResult, paths: dict[str, Path], console: Console) -> None:
    lm = result.headline == BPC
    table = Table(title=f"stages on {result.samples} {'characters' if lm else 'images'}")
    for col in ("order", "k", "mask", *(["bpc"] if lm else []), "accuracy", "teacher MB",
                "ms/batch"):
        table.add_column(col, justify="left" if col in ("order", "mask") else "right")
    for r in result.rows:
        table.add_row(r.order, str(r.k), r.mask, *([f"{r.bpc:.4f}"] if lm else []),
                      f"{r.accuracy:.4f}", f"{r.bytes_loaded / 2**20:.2f}",
                      f"{r.ms_per_batch:.1f}")
    console.print(table)
    if result.prefix_auc is not None:
        console.print(f"prefix AUC (mean {result.headline.label}, k=0..N): "
                      f"{result.prefix_auc:.4f}")
    console.print(f"blocks run: {result.block_runs} (one forward per mask would run "
                  f"{result.naive_block_runs})")
    console.print("wrote:")
    for path in paths.values():
        console.print(f"  {path}", soft_wrap=True)


def resolve_split(split: str, orders: list[str]) -> str:
    """``auto`` is val for a table of every mask (choices such as a loading plan are made on
    it, so it must not be the test split), else test."""
    if split == "auto":
        return "val" if "all" in orders else "test"
    if split not in ("test", "val"):
        raise ConfigError(f"split={split!r} is unknown; use auto, test or val")
    return split


def bundle_block_bytes(checkpoint: str | Path) -> list[int] | None:
    """Sizes of a bundle's teacher files (at their stored precision), or None for a run."""
    return read_manifest(checkpoint).block_bytes() if is_bundle(checkpoint) else None


def evaluate(cfg: DictConfig) -> StageResult:
    """Runs the evaluation that ``conf/evaluate.yaml`` describes and writes
    ``stages.csv|json|png`` and ``masks.csv`` (each mask's bytes) into the output dir."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint is not set; pass checkpoint=<distill run dir, .ckpt or "
                          "bundle dir>")
    check_app_config(cfg, "evaluate")
    split = resolve_split(cfg.split, list(cfg.orders))
    if not cfg.out and not HydraConfig.initialized():
        raise ConfigError("out is not set and there is no Hydra run directory; pass out=<dir>")
    out_dir = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir)
    checkpoint = cfg.checkpoint if is_url(cfg.checkpoint) else Path(cfg.checkpoint).expanduser()
    if not is_url(checkpoint) and not checkpoint.exists():
        raise CheckpointError(f"checkpoint={checkpoint} does not exist; pass a distill run "
                              "directory, a Lightning .ckpt or a bundle directory")
    hybrid, model_cfg = load_hybrid(checkpoint)
    orders = list(cfg.orders)
    parse_orders(orders, hybrid.num_blocks)  # fail on a bad order before loading the data

    data_cfg, source = data_cfg_of(cfg.get("data"), checkpoint)
    console = Console()
    console.print(f"evaluating {checkpoint} on the {split} split of "
                  f"{source or 'data=' + str(data_cfg.get('_target_'))}", soft_wrap=True)
    result = evaluate_on_split(hybrid, data_cfg, split, orders, saved_from=source,
                               batch_size=cfg.batch_size, limit_batches=cfg.limit_batches,
                               device=cfg.device, input_shape=model_cfg["input_shape"],
                               progress=True)

    meta = {"split": split, "checkpoint": str(checkpoint), "model": model_cfg.get("name")}
    paths = write_evaluation(result, hybrid, out_dir, "stages", meta,
                             bundle_block_bytes(checkpoint))
    print_result(result, paths, console)
    return result


@user_errors_as_one_line
def run(cfg: DictConfig) -> float | None:
    """Evaluates and returns the prefix AUC (for sweepers); user errors exit 2 in one line."""
    return evaluate(cfg).prefix_auc


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Console-script entry point (``pwl-evaluate``)."""
    return run(cfg)


if __name__ == "__main__":
    main()
