"""Export a distilled model as a progressive-loading bundle.

    python -m pwl.export checkpoint=<distill run dir or .ckpt> out=<dir>

The bundle (see ``pwl.runtime.bundle``) gets the stage accuracies of the run
(``stages_test.csv``, else the last epoch of ``stages.csv``) and the run's data
config (``.hydra/config.yaml``) when they exist, so ``pwl.serve`` can stream the
right test set. The bundle is verified after writing.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pwl.checkpoint import load_hybrid, run_dir_of, saved_data_cfg
from pwl.cli import human_bytes, user_errors_as_one_line
from pwl.errors import CheckpointError, ConfigError
from pwl.runtime.bundle import MANIFEST, export_bundle, read_manifest, verify

STAGE_FILES = ("stages_test.csv", "stages.csv")


def read_stage_rows(path: Path) -> list[dict[str, Any]]:
    """Rows (mask, k, accuracy) of a stages CSV; of its last epoch when it has epochs."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise CheckpointError(f"cannot read stage accuracies {path}: {e}") from None
    if not rows or not {"mask", "accuracy"} <= rows[0].keys():
        raise CheckpointError(f"{path} has no mask/accuracy columns; pass stages=null to "
                              "export without stage accuracies")
    if rows[0].get("epoch") not in (None, ""):
        last = max(int(r["epoch"]) for r in rows)
        rows = [r for r in rows if int(r["epoch"]) == last]
    by_mask: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_mask.setdefault(r["mask"], {"mask": r["mask"], "k": r["mask"].count("T"),
                                       "accuracy": float(r["accuracy"])})
    return sorted(by_mask.values(), key=lambda r: (r["k"], r["mask"][::-1]))


def find_stages(setting: str | None, run: Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Stage rows and where they came from, for ``stages=auto|<csv>|null``."""
    if setting is None:
        return None, None
    if setting != "auto":
        path = Path(to_absolute_path(setting))
        if not path.is_file():
            raise ConfigError(f"stages={setting}: {path} does not exist; give a stages CSV, "
                              "auto or null")
        return read_stage_rows(path), str(path)
    for name in STAGE_FILES:
        if (run / name).is_file():
            return read_stage_rows(run / name), str(run / name)
    return None, None


def find_data_cfg(setting: str | None, checkpoint: Path) -> dict[str, Any] | None:
    """The data config for ``data=auto|null``: the one saved with the run or bundle."""
    if setting is None:
        return None
    if setting != "auto":
        raise ConfigError(f"data={setting!r}: use auto (the run's data config) or null")
    return saved_data_cfg(checkpoint, fix="pass data=null to export without it")[0]


def export(cfg: DictConfig) -> Path:
    checkpoint = Path(to_absolute_path(cfg.checkpoint))
    out = Path(to_absolute_path(cfg.out))
    run = run_dir_of(checkpoint)
    hybrid, model_cfg = load_hybrid(checkpoint)
    stages, stages_source = find_stages(cfg.stages, run)
    data_cfg = find_data_cfg(cfg.data, checkpoint)
    if cfg.stages == "auto" and stages is None and (run / MANIFEST).is_file():
        # re-exporting a bundle keeps the stage accuracies its manifest knew
        stages, stages_source = read_manifest(run)["stages"], str(run / MANIFEST)
    order = cfg.loading_order
    if OmegaConf.is_config(order):
        order = OmegaConf.to_container(order)
    export_bundle(hybrid, model_cfg, out, stages=stages, data_cfg=data_cfg, loading_order=order)
    manifest = verify(out)
    print_summary(out, manifest, stages_source)
    return out


def print_summary(out: Path, manifest: dict[str, Any], stages_source: str | None) -> None:
    console = Console()
    table = Table(title=f"bundle {out} (verified)")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for rel, entry in manifest["files"].items():
        table.add_row(rel, human_bytes(entry["bytes"]), entry["sha256"][:16])
    console.print(table)
    params = manifest["params"]
    student_bytes = manifest["files"]["student.safetensors"]["bytes"]
    teacher_bytes = sum(e["bytes"] for rel, e in manifest["files"].items()
                        if rel.startswith("teacher/"))
    console.print(f"N={manifest['num_blocks']}  loading order: "
                  f"{' -> '.join(manifest['loading_order'])}")
    console.print(f"params: teacher {params['teacher']:,}  student {params['student']:,}  "
                  f"adapters {params['adapters']:,}  |  student file / teacher files = "
                  f"{student_bytes / teacher_bytes:.3f}")
    if manifest["stages"]:
        accs = "  ".join(f"{r['mask']} {r['accuracy']:.4f}" for r in manifest["stages"])
        console.print(f"stage accuracies ({stages_source}): {accs}")
    else:
        console.print("stage accuracies: none (no stages_test.csv or stages.csv in the run)")
    data = manifest["data"]
    console.print(f"data: {data.get('_target_') if data else 'none (serve needs data=<name>)'}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    user_errors_as_one_line(export)(cfg)


if __name__ == "__main__":
    main()
