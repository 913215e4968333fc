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
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from copy import deepcopy
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

from pwl.atomic import atomic_write_bytes
from pwl.blocks import BlockNet
from pwl.build import check_saved_model_cfg
from pwl.checkpoint import load_hybrid, run_dir_of, saved_data_cfg
from pwl.cli import CONF_DIR, human_bytes, user_errors_as_one_line
from pwl.config import to_dict
from pwl.data.registry import build_datamodule
from pwl.errors import CheckpointError, ConfigError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder, loading_masks, validate_mask
from pwl.precision import check_dtype, quantise
from pwl.runtime.manifest import (
    ADAPTERS_FILE,
    FORMAT_VERSION,
    MANIFEST,
    STUDENT_FILE,
    read_manifest,
    teacher_block_file,
    verify,
)
from pwl.runtime.materialise import assign_unit
from pwl.runtime.storage import FileEntry
from pwl.schemas import check_app_config
from pwl.stages import StageResult, accuracy_by_mask, evaluate_stages, last_epoch, read_stages
from pwl.stages.plans import read_plan

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_dir(out: Path) -> Path:
    """A new hidden sibling of ``out`` to write the bundle into; checks ``out`` first.

    ``out`` may be missing, empty or an earlier bundle (replaced at the end); a file or a
    non-empty folder that is not a bundle is refused. Staging folders that a killed or
    failed export left (their process is gone) are removed.
    """
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"out={out} is a file; give a directory for the bundle")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise CheckpointError(f"out={out} is a non-empty directory and not a bundle; choose a "
                              "new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*-*-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if stale.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    # mkdtemp makes it private (0700); the bundle gets the permissions mkdir would give.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def _publish(staging: Path, out: Path) -> Path:
    """Renames the finished bundle ``staging`` to ``out``, replacing what was there.

    Each step is a rename, so a kill leaves either the old bundle or the new one at
    ``out`` (or, between the two renames, none there and both intact under hidden
    names), never a half-written bundle under the name readers open.
    """
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _stage_rows(stages: Sequence[Mapping[str, Any]] | None, n: int) -> list[dict[str, Any]]:
    rows = []
    for row in stages or []:
        mask = validate_mask(str(row["mask"]), n)
        rows.append({"mask": mask, "k": mask.count("T"), "accuracy": float(row["accuracy"])})
    return rows


def stored_hybrid(hybrid: HybridNet, blocks: Sequence[Mapping[str, torch.Tensor]]) -> HybridNet:
    """A copy of ``hybrid`` whose teacher runs the stored teacher shards ``blocks`` (one
    per block, as written), dequantised exactly as the runtime does when it loads them."""
    copy = deepcopy(hybrid).eval()
    for i, tensors in enumerate(blocks):
        assign_unit(copy.teacher, i, tensors, f"stored teacher block {i}")
    return copy


def evaluate_on_split(hybrid: HybridNet, masks: Sequence[str],
                      data_cfg: Mapping[str, Any] | DictConfig, split: str,
                      data_source: str | Path | None = None,
                      flip_pairs: Sequence[tuple[str, str]] = ()) -> StageResult:
    """``evaluate_stages`` of ``masks`` (and ``flip_pairs``) on ``split`` of ``data_cfg``."""
    dm = build_datamodule(to_dict(data_cfg), saved_from=data_source)
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    batches = ((dm.preprocess(images, train=False), labels) for images, labels in loader)
    return evaluate_stages(hybrid, batches, list(masks), flip_pairs=flip_pairs)


def measure_stages(hybrid: HybridNet, masks: Sequence[str],
                   data_cfg: Mapping[str, Any] | DictConfig, split: str,
                   data_source: str | Path | None = None) -> list[dict[str, Any]]:
    """Stage rows (mask, k, accuracy) of ``masks`` on ``split`` of ``data_cfg``, on the CPU."""
    result = evaluate_on_split(hybrid, masks, data_cfg, split, data_source)
    return [{"mask": m, "k": m.count("T"), "accuracy": result.accuracy(m)} for m in masks]


def export_bundle(hybrid: HybridNet, model_cfg: Mapping[str, Any] | DictConfig,
                  out_dir: str | Path, stages: Sequence[Mapping[str, Any]] | None = None,
                  data_cfg: Mapping[str, Any] | DictConfig | None = None,
                  loading_order: LoadingOrder = "prefix", dtype: str = "fp32",
                  stages_split: str | None = None, plan: Sequence[str] | None = None,
                  data_source: str | Path | None = None) -> Path:
    """Writes ``hybrid`` as a bundle at ``out_dir``.

    Args:
        hybrid: the trained teacher, student and adapters.
        model_cfg: the model config they were built from (rebuilds them at load).
        out_dir: a new or empty directory, or an earlier bundle (replaced).
        stages: stage accuracies, rows with ``mask`` and ``accuracy``, measured with
            ``hybrid``'s own (fp32) weights.
        data_cfg: the data config (``conf/data``) the bundle is evaluated on;
            ``pwl.serve`` streams its test split.
        loading_order: the default order (see ``loading_masks``).
        dtype: precision of the teacher shards (``pwl.precision``); the student stays fp32.
        stages_split: the split ``stages`` were measured on (test | val). Below fp32
            the masks of ``stages`` are measured again with the stored weights on this
            split of ``data_cfg``; without either, the bundle gets no stage accuracies
            (a warning says so) rather than the fp32 ones.
        plan: a loading plan (masks, from ``pwl.plan``) to record as the manifest's ``plan``.
        data_source: the file ``data_cfg`` was read from (validated as saved data), or
            None for the user's own config.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    n = hybrid.num_blocks
    # A bundle is opened as data: a model config it could not be opened with is refused now.
    check_saved_model_cfg(to_dict(model_cfg), "model_cfg")
    check_dtype(dtype)
    masks = loading_masks(loading_order, n)
    plan_masks = loading_masks(list(plan), n) if plan is not None else None
    stage_rows = _stage_rows(stages, n)
    if stages_split not in (None, "test", "val"):
        raise ConfigError(f"stages_split={stages_split!r} is unknown; use test or val")
    blocks = [unit_tensors(hybrid.teacher, i) for i in range(n)]
    outside = sorted(module_tensors(hybrid.teacher).keys() - set().union(*blocks))
    if outside:
        raise CheckpointError(f"teacher tensors {outside[:3]} belong to no block (not under "
                              "stem., blocks.<i>. or head.); they cannot be loaded per block")
    # Written into a hidden sibling and renamed into place at the end (``_publish``).
    final, out = out, _staging_dir(out)
    # The student file is all the first answer reads; the adapters follow it.
    files = {STUDENT_FILE: _write(out, STUDENT_FILE, module_tensors(hybrid.student, "student."),
                                  "student"),
             ADAPTERS_FILE: _write(out, ADAPTERS_FILE, module_tensors(hybrid.adapters,
                                                                      "adapters."), "adapters")}
    stored = [quantise(tensors, dtype) for tensors in blocks]
    if dtype != "fp32" and stage_rows:
        if data_cfg is None or stages_split is None:
            warnings.warn(f"the {dtype} bundle gets no stage accuracies: re-measuring them "
                          "with the stored weights needs data_cfg and stages_split, and the "
                          "fp32 ones would not hold", stacklevel=2)
            stage_rows = []
        else:
            stage_rows = measure_stages(stored_hybrid(hybrid, stored),
                                        [r["mask"] for r in stage_rows], data_cfg,
                                        stages_split, data_source)
    for i, tensors in enumerate(stored):
        files[teacher_block_file(i)] = _write(out, teacher_block_file(i), tensors,
                                              f"teacher block {i} ({dtype})")
    dtypes = {rel: (dtype if rel.startswith("teacher/") else "fp32") for rel in files}
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_blocks": n,
        "model": to_dict(model_cfg),
        "feature_shapes": {"teacher": [list(s) for s in hybrid.adapters.teacher_shapes],
                           "student": [list(s) for s in hybrid.adapters.student_shapes]},
        "loading_order": masks,
        "files": {rel: {**entry.to_json(), "dtype": dtypes[rel]} for rel, entry in files.items()},
        "params": {"teacher": _num_params(hybrid.teacher),
                   "student": _num_params(hybrid.student),
                   "adapters": _num_params(hybrid.adapters),
                   "teacher_blocks": [hybrid.teacher.unit_num_params(i) for i in range(n)]},
        "stages": stage_rows,
        "data": to_dict(data_cfg) if data_cfg is not None else None,
        **({"plan": plan_masks} if plan_masks is not None else {}),
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return _publish(out, final)




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


def find_data_cfg(setting: str | None, checkpoint: Path
                  ) -> tuple[dict[str, Any] | None, Path | None]:
    """The data config for ``data=auto|null`` (the one saved with the run or bundle) and
    the file it was read from."""
    if setting is None:
        return None, None
    if setting != "auto":
        raise ConfigError(f"data={setting!r}: use auto (the run's data config) or null")
    return saved_data_cfg(checkpoint, fix="pass data=null to export without it")


def find_stages_split(setting: str | None, stages_source: str | None) -> str | None:
    """The split stage rows were measured on, for ``stages_split=auto|test|val``.

    ``auto`` reads the ``split`` that ``pwl.evaluate`` and the StageEval callback write
    into ``<stem>.json`` beside the CSV (``stages_test.csv`` is the test split); None when
    that is not known (a manifest's rows, a CSV without its JSON).
    """
    if setting in ("test", "val"):
        return setting
    if setting not in (None, "auto"):
        raise ConfigError(f"stages_split={setting!r} is unknown; use auto, test or val")
    if stages_source is None or not stages_source.endswith(".csv"):
        return None
    path = Path(stages_source)
    meta = path.with_suffix(".json")
    if meta.is_file():
        try:
            split = json.loads(meta.read_text()).get("split")
        except (OSError, json.JSONDecodeError):
            split = None
        if split in ("test", "val"):
            return split
    return "test" if path.name == "stages_test.csv" else None


def find_loading_order(setting: Any, run: Path) -> tuple[LoadingOrder, list[str] | None]:
    """The order for ``loading_order=prefix|suffix|[...]|plan|<plan.csv>``, and the plan's
    masks when it names a plan (``plan``: ``<run>/plan.csv`` from ``pwl.plan``)."""
    if OmegaConf.is_config(setting):
        return OmegaConf.to_container(setting), None
    if setting == "plan" or (isinstance(setting, str) and setting.endswith(".csv")):
        path = run / "plan.csv" if setting == "plan" else Path(to_absolute_path(setting))
        if not path.is_file():
            raise ConfigError(f"loading_order={setting}: {path} does not exist; run "
                              "`python -m pwl.plan checkpoint=<run>` first or give a plan.csv")
        masks = read_plan(path)
        return masks, masks
    return setting, None


def export(cfg: DictConfig) -> Path:
    check_app_config(cfg, "export")
    checkpoint = Path(to_absolute_path(cfg.checkpoint))
    out = Path(to_absolute_path(cfg.out))
    run = run_dir_of(checkpoint)
    hybrid, model_cfg = load_hybrid(checkpoint)
    stages, stages_source = find_stages(cfg.stages, run)
    data_cfg, data_source = find_data_cfg(cfg.data, checkpoint)
    if cfg.stages == "auto" and stages is None and (run / MANIFEST).is_file():
        # re-exporting a bundle keeps the stage accuracies its manifest knew
        stages, stages_source = read_manifest(run)["stages"], str(run / MANIFEST)
    order, plan = find_loading_order(cfg.loading_order, run)
    dtype = check_dtype(cfg.get("dtype", "fp32"))
    stages_split = find_stages_split(cfg.get("stages_split", "auto"), stages_source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        export_bundle(hybrid, model_cfg, out, stages=stages, data_cfg=data_cfg,
                      loading_order=order, dtype=dtype, stages_split=stages_split, plan=plan,
                      data_source=data_source)
    manifest = verify(out)
    dropped = dtype != "fp32" and bool(stages) and not manifest["stages"]
    if dtype != "fp32" and manifest["stages"]:
        stages_source = f"re-measured with the {dtype} weights on {stages_split}"
    print_summary(out, manifest, stages_source, dropped)
    for w in caught:
        Console(stderr=True).print(f"warning: {w.message}", soft_wrap=True)
    return out


def print_summary(out: Path, manifest: dict[str, Any], stages_source: str | None,
                  dropped: bool = False) -> None:
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
                  f"adapters {params['adapters']:,}  |  student file (all the first answer "
                  f"reads) / teacher files = {student_bytes / teacher_bytes:.3f}")
    dtypes = sorted({e.get("dtype", "fp32") for rel, e in manifest["files"].items()
                     if rel.startswith("teacher/")})
    console.print(f"teacher shards: {', '.join(dtypes)}, {human_bytes(teacher_bytes)}"
                  + ("  (order from a loading plan)" if "plan" in manifest else ""))
    if manifest["stages"]:
        accs = "  ".join(f"{r['mask']} {r['accuracy']:.4f}" for r in manifest["stages"])
        console.print(f"stage accuracies ({stages_source}): {accs}")
    elif dropped:
        console.print("stage accuracies: none (below fp32 they are re-measured with the stored "
                      "weights, which needs the data config and the split of the stage rows: "
                      "pass stages_split=test|val)")
    else:
        console.print("stage accuracies: none (no stages_test.csv or stages.csv in the run)")
    data = manifest["data"]
    console.print(f"data: {data.get('_target_') if data else 'none (serve needs data=<name>)'}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    user_errors_as_one_line(export)(cfg)


if __name__ == "__main__":
    main()
