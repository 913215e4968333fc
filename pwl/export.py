"""Export a distilled model as a progressive-loading bundle.

    python -m pwl.export checkpoint=<distill run dir or .ckpt> out=<dir>

The bundle (format: ``pwl.runtime.manifest``) gets the stage accuracies of the run
(``stages_test.csv``, else the last epoch of ``stages.csv``) and the run's data
config (``.hydra/config.yaml``) when they exist, so ``pwl.serve`` can stream the
right test set. The bundle is verified after writing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from pwl.blocks import BlockNet
from pwl.checkpoint import load_hybrid, run_dir_of, saved_data_cfg
from pwl.cli import human_bytes, user_errors_as_one_line
from pwl.config import to_dict
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder, loading_masks, validate_mask
from pwl.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    STUDENT_FILE,
    read_manifest,
    teacher_block_file,
    verify,
)
from pwl.runtime.storage import FileEntry
from pwl.stages import accuracy_by_mask, last_epoch, read_stages
from pwl.weights import atomic_write_bytes

STAGE_FILES = ("stages_test.csv", "stages.csv")


def module_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor ``module`` needs to run (state dict + non-persistent buffers), on the CPU."""
    tensors = dict(module.state_dict())
    for name, buf in module.named_buffers():
        tensors.setdefault(name, buf)
    return {prefix + k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def unit_tensors(net: BlockNet, block: int) -> dict[str, torch.Tensor]:
    """The tensors of swap unit ``block``, keyed as in ``net``'s state dict."""
    tensors: dict[str, torch.Tensor] = {}
    for module, prefix in zip(net.unit_modules(block), net.unit_prefixes(block)):
        tensors.update(module_tensors(module, prefix))
    return tensors


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _write(out: Path, rel: str, tensors: dict[str, torch.Tensor], what: str) -> FileEntry:
    data = save_safetensors_bytes(tensors, metadata={"format": "pt", "pwl": what})
    atomic_write_bytes(out / rel, data)
    return FileEntry(len(data), hashlib.sha256(data).hexdigest())


def _prepare_out_dir(out: Path) -> None:
    """Clears an earlier bundle at ``out``; refuses a non-empty folder that is not one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"out={out} is a file; give a directory for the bundle")
    if (out / MANIFEST).is_file():
        for path in [out / MANIFEST, out / STUDENT_FILE,
                     *(out / "teacher").glob("block_*.safetensors")]:
            path.unlink(missing_ok=True)
    elif any(out.iterdir()):
        raise CheckpointError(f"out={out} is a non-empty directory and not a bundle; choose a "
                              "new or empty directory")


def _stage_rows(stages: Sequence[Mapping[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    rows = []
    for row in stages or []:
        mask = validate_mask(str(row["mask"]), n)
        rows.append({"mask": mask, "k": mask.count("T"), "accuracy": float(row["accuracy"])})
    return rows


def export_bundle(hybrid: HybridNet, model_cfg: Mapping[str, Any] | DictConfig,
                  out_dir: str | Path, stages: Sequence[Mapping[str, Any]] | None = None,
                  data_cfg: Mapping[str, Any] | DictConfig | None = None,
                  loading_order: LoadingOrder = "prefix") -> Path:
    """Writes ``hybrid`` as a bundle at ``out_dir``.

    Args:
        hybrid: the trained teacher, student and adapters.
        model_cfg: the model config they were built from (rebuilds them at load).
        out_dir: a new or empty directory, or an earlier bundle (replaced).
        stages: stage accuracies, rows with ``mask`` and ``accuracy``.
        data_cfg: the data config (``conf/data``) the bundle is evaluated on;
            ``pwl.serve`` streams its test split.
        loading_order: the default order (see ``loading_masks``).

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    n = hybrid.num_blocks
    masks = loading_masks(loading_order, n)
    stage_rows = _stage_rows(stages, n)
    blocks = [unit_tensors(hybrid.teacher, i) for i in range(n)]
    outside = sorted(module_tensors(hybrid.teacher).keys() - set().union(*blocks))
    if outside:
        raise CheckpointError(f"teacher tensors {outside[:3]} belong to no block (not under "
                              "stem., blocks.<i>. or head.); they cannot be loaded per block")
    _prepare_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {STUDENT_FILE: _write(out, STUDENT_FILE, {
        **module_tensors(hybrid.student, "student."),
        **module_tensors(hybrid.adapters, "adapters.")}, "student and adapters")}
    for i, tensors in enumerate(blocks):
        files[teacher_block_file(i)] = _write(out, teacher_block_file(i), tensors,
                                              f"teacher block {i}")
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_blocks": n,
        "model": to_dict(model_cfg),
        "feature_shapes": {"teacher": [list(s) for s in hybrid.adapters.teacher_shapes],
                           "student": [list(s) for s in hybrid.adapters.student_shapes]},
        "loading_order": masks,
        "files": {rel: entry.to_json() for rel, entry in files.items()},
        "params": {"teacher": _num_params(hybrid.teacher),
                   "student": _num_params(hybrid.student),
                   "adapters": _num_params(hybrid.adapters),
                   "teacher_blocks": [hybrid.teacher.unit_num_params(i) for i in range(n)]},
        "stages": stage_rows,
        "data": to_dict(data_cfg) if data_cfg is not None else None,
    }
    # Written last: a bundle without a manifest is visibly incomplete.
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return out




def read_stage_rows(path: Path) -> list[dict[str, Any]]:
    """Rows (mask, k, accuracy) of a stages CSV; of its last epoch when it has epochs."""
    by_mask = accuracy_by_mask(last_epoch(read_stages(path)))
    return [{"mask": m, "k": m.count("T"), "accuracy": a} for m, a in by_mask.items()]


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
    student_bytes = manifest["files"][STUDENT_FILE]["bytes"]
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
