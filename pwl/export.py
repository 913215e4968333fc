"""Export a distilled model as a progressive-loading bundle.

    python -m pwl.export checkpoint=<distill run dir, .ckpt or bundle> out=<dir>

Resolves the config, measures the stages of the loading order (and of the
prefix and suffix orders and the plan) with the weights as stored at ``dtype``
on ``stages_split`` of the run's data, and hands everything to the writer
(``pwl.runtime.bundle.write_bundle``). The bundle is verified after writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pwl.checkpoint import load_hybrid, run_dir_of, saved_data_cfg
from pwl.cli import CONF_DIR, human_bytes, user_errors_as_one_line
from pwl.errors import ConfigError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder, masks_for_order
from pwl.precision import check_dtype
from pwl.runtime.bundle import Manifest, StageRecord, stored_blocks, write_bundle
from pwl.runtime.materialise import stored_hybrid, verify
from pwl.schemas import check_app_config
from pwl.stages.measure import evaluate_on_split
from pwl.stages.plans import read_plan


def measure_stage_records(hybrid: HybridNet, dtype: str, masks: list[str],
                          data_cfg: dict[str, Any], data_source: Path | None,
                          split: str) -> list[StageRecord]:
    """The accuracy of ``masks`` on ``split``, measured with the teacher as stored at ``dtype``
    (dequantised as a load does) and the fp32 student and adapters."""
    stored = stored_hybrid(hybrid, stored_blocks(hybrid.teacher, dtype), dtype)
    result = evaluate_on_split(stored, data_cfg, split, masks, saved_from=data_source,
                               device="cpu")
    rows = {r.mask: r for r in result.rows}
    return [StageRecord(mask=m, k=m.count("T"), accuracy=rows[m].accuracy, bpc=rows[m].bpc,
                        split=split, precision=dtype) for m in masks]


def find_data_cfg(setting: str | None, checkpoint: Path
                  ) -> tuple[dict[str, Any] | None, Path | None]:
    """The data config for ``data=auto|null`` (the one saved with the run or bundle) and
    the file it was read from."""
    if setting is None:
        return None, None
    if setting != "auto":
        raise ConfigError(f"data={setting!r}: use auto (the run's data config) or null")
    return saved_data_cfg(checkpoint, fix="pass data=null to export without it")


def find_loading_order(setting: Any, run: Path) -> tuple[Any, list[str] | None]:
    """The order for ``loading_order=prefix|suffix|[...]|plan|<plan.csv>``, and the plan's
    masks when it names a plan (``plan``: ``<run>/plan.csv`` from ``pwl.plan``)."""
    if OmegaConf.is_config(setting):
        return OmegaConf.to_container(setting), None
    if setting == "plan" or (isinstance(setting, str) and setting.endswith(".csv")):
        path = run / "plan.csv" if setting == "plan" else Path(to_absolute_path(setting))
        if not path.is_file():
            raise ConfigError(f"loading_order={setting}: {path} does not exist; run "
                              "`python -m pwl.plan checkpoint=<run>` first or give a plan.csv")
        masks = list(read_plan(path).masks)
        return masks, masks
    return setting, None


def export(cfg: DictConfig) -> Manifest:
    check_app_config(cfg, "export")
    checkpoint = Path(to_absolute_path(cfg.checkpoint))
    out = Path(to_absolute_path(cfg.out))
    run = run_dir_of(checkpoint)
    hybrid, model_cfg = load_hybrid(checkpoint)
    n = hybrid.num_blocks
    data_cfg, data_source = find_data_cfg(cfg.data, checkpoint)
    order, plan = find_loading_order(cfg.loading_order, run)
    order_masks = list(LoadingOrder.parse(order, n).masks)
    dtype = check_dtype(cfg.dtype)
    split = cfg.stages_split
    if split not in (None, "test", "val"):
        raise ConfigError(f"stages_split={split!r} is unknown; use test, val or null")
    stages: list[StageRecord] = []
    if split is not None and data_cfg is not None:
        masks = [*order_masks, *(plan or []), *masks_for_order("prefix", n),
                 *masks_for_order("suffix", n)]
        stages = measure_stage_records(hybrid, dtype, list(dict.fromkeys(masks)), data_cfg,
                                       data_source, split)
    write_bundle(hybrid, model_cfg, out, dtype=dtype, loading_order=order_masks, stages=stages,
                 data_cfg=data_cfg, plan=plan)
    manifest = verify(out)
    print_summary(out, manifest)
    return manifest


def print_summary(out: Path, manifest: Manifest) -> None:
    console = Console()
    table = Table(title=f"bundle {out} (verified)")
    for col in ("file", "size", "dtype", "sha256"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for rel, entry in manifest.files.items():
        table.add_row(rel, human_bytes(entry.bytes), entry.dtype, entry.sha256[:16])
    console.print(table)
    params = manifest.params or {}
    console.print(f"N={manifest.num_blocks}  loading order: {' -> '.join(manifest.loading_order)}"
                  + ("  (from a loading plan)" if manifest.plan else ""))
    console.print(f"params: teacher {params.get('teacher', 0):,}  student "
                  f"{params.get('student', 0):,}  adapters {params.get('adapters', 0):,}  |  "
                  f"student + adapters files / teacher files = "
                  f"{manifest.side_bytes() / manifest.teacher_bytes():.3f}")
    if manifest.stages:
        first = manifest.stages[0]
        accs = "  ".join(f"{r.mask} {r.accuracy:.4f}" for r in manifest.stages)
        console.print(f"stage accuracies ({first.split}, teacher at {first.precision}): {accs}")
    else:
        console.print("stage accuracies: none (they need the run's data config and "
                      "stages_split=test|val)")
    data = manifest.data
    console.print(f"data: {data.get('_target_') if data else 'none (serve needs data=<name>)'}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    user_errors_as_one_line(export)(cfg)


if __name__ == "__main__":
    main()
