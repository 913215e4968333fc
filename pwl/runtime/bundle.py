"""The progressive-loading bundle: a student file, one file per teacher block, a manifest.

Layout::

    manifest.json                   format version, model config, N, default loading
                                    order, size and sha256 of every file, stage
                                    accuracies, parameter counts, data config
    student.safetensors             student ("student.*") and adapters ("adapters.*")
    teacher/block_<i>.safetensors   teacher swap unit i (block 0 carries the stem,
                                    block N-1 the head); keys as in the teacher

Files hold every tensor a module needs to run: its state dict plus any
non-persistent buffers, so a model built on the meta device can be completed
from the files alone.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.build import build_net, check_model_cfg, to_dict
from pwl.errors import CheckpointError, ConfigError, MaskError
from pwl.hybrid import HybridNet, validate_mask
from pwl.runtime.storage import FileEntry, check_sha256, check_size, read_file, read_tensors

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STUDENT_FILE = "student.safetensors"
REQUIRED_KEYS = ("format_version", "num_blocks", "model", "feature_shapes", "loading_order",
                 "files")

LoadingOrder = str | Sequence[int] | Sequence[str]


def teacher_block_file(block: int) -> str:
    """The bundle-relative path of teacher block ``block``."""
    return f"teacher/block_{block}.safetensors"


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


def assign_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: Path | str
                   ) -> None:
    """Makes ``tensors`` (keys relative to ``module``) the module's own, replacing meta ones.

    The tensors are used in place (``load_state_dict(assign=True)``), not copied.
    Raises ``CheckpointError`` naming ``source`` on missing, unexpected or misshapen keys.
    """
    persistent = set(module.state_dict())
    expected = persistent | {name for name, _ in module.named_buffers()}
    missing = sorted(expected - tensors.keys())
    unexpected = sorted(tensors.keys() - expected)
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source} does not match the model in the manifest: "
                              + ", ".join(details))
    try:
        module.load_state_dict({k: tensors[k] for k in persistent}, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not match the model in the manifest: "
                              f"{str(e).strip()}") from None
    for name in expected - persistent:
        owner, _, attr = name.rpartition(".")
        module.get_submodule(owner).register_buffer(attr, tensors[name], persistent=False)


def _split_prefixes(tensors: Mapping[str, torch.Tensor], modules: Sequence[nn.Module],
                    prefixes: Sequence[str], source: Path | str) -> None:
    """Assigns each ``prefix``-keyed part of ``tensors`` to its module."""
    rest = set(tensors)
    for module, prefix in zip(modules, prefixes):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        rest -= {prefix + k for k in part}
        assign_tensors(module, part, source)
    if rest:
        raise CheckpointError(f"{source} holds tensors of no expected module "
                              f"(e.g. {sorted(rest)[0]}); re-export the bundle")


def assign_unit(teacher: BlockNet, block: int, tensors: Mapping[str, torch.Tensor],
                source: Path | str) -> None:
    """Materialises teacher swap unit ``block`` from the tensors of its block file."""
    _split_prefixes(tensors, teacher.unit_modules(block), teacher.unit_prefixes(block), source)


def assign_student(hybrid: HybridNet, tensors: Mapping[str, torch.Tensor],
                   source: Path | str) -> None:
    """Materialises the student and the adapters from the tensors of the student file."""
    _split_prefixes(tensors, [hybrid.student, hybrid.adapters], ["student.", "adapters."],
                    source)


def loading_masks(order: LoadingOrder, num_blocks: int) -> list[str]:
    """The masks a loading order passes through: all-student, then one teacher block more each.

    Args:
        order: ``"prefix"`` (from the input side), ``"suffix"``, a list of block
            indices in loading order, or a list of masks each adding one ``T``
            (all-student first, added if left out).
        num_blocks: N.

    Returns:
        masks, ``"S" * N`` first; a partial order ends before all-teacher.
    """
    n = num_blocks
    if isinstance(order, str):
        if order == "prefix":
            blocks = list(range(n))
        elif order == "suffix":
            blocks = list(range(n - 1, -1, -1))
        else:
            raise MaskError(f"loading order {order!r} cannot be loaded block by block; use "
                            "prefix, suffix, a list of block indices or a list of masks")
    else:
        items = list(order)
        if items and all(isinstance(m, str) for m in items):
            blocks = _blocks_of_masks([validate_mask(m, n) for m in items], n)
        elif all(isinstance(b, int) and not isinstance(b, bool) for b in items):
            blocks = items
        else:
            raise MaskError(f"loading order {items!r} mixes types; give block indices "
                            "[0, 1, ...] or masks ['TSSS', 'TTSS', ...]")
    bad = [b for b in blocks if not 0 <= b < n]
    if bad or len(set(blocks)) != len(blocks):
        raise MaskError(f"loading order {blocks} must name distinct blocks in [0, {n - 1}]")
    masks, current = ["S" * n], ["S"] * n
    for b in blocks:
        current[b] = "T"
        masks.append("".join(current))
    return masks


def _blocks_of_masks(masks: list[str], n: int) -> list[int]:
    if masks[0] != "S" * n:
        masks = ["S" * n, *masks]
    blocks = []
    for prev, mask in zip(masks, masks[1:]):
        changed = [i for i in range(n) if prev[i] != mask[i]]
        if len(changed) != 1 or mask[changed[0]] != "T":
            raise MaskError(f"loading order goes from {prev!r} to {mask!r}; each step must add "
                            "exactly one teacher block")
        blocks.append(changed[0])
    return blocks


def adapters_used(mask: str) -> set[tuple[str, int]]:
    """The adapters ``("to_teacher" | "to_student", boundary)`` a mask runs through."""
    return {("to_teacher" if mask[b + 1] == "T" else "to_student", b)
            for b in range(len(mask) - 1) if mask[b] != mask[b + 1]}


def import_builders(model_cfg: Mapping[str, Any]) -> None:
    """Imports the teacher and student builders, so a later build does not pay for imports."""
    for role in ("teacher", "student"):
        target = model_cfg.get(role, {}).get("_target_")
        if target is not None:
            try:
                get_object(target)
            except (ImportError, ValueError) as e:
                raise ConfigError(f"model.{role}._target_={target} cannot be imported: "
                                  f"{e}") from None


def build_on_meta(cfg: Mapping[str, Any], role: str) -> BlockNet:
    """Builds the net of ``cfg`` with its tensors on the meta device (no memory held)."""
    try:
        with torch.device("meta"):
            return build_net(cfg, role)
    except ConfigError as meta_error:
        # Some builders read tensor values (.item(), .tolist()) and cannot run on meta;
        # building on the CPU still works, it only allocates the weights once.
        net = build_net(cfg, role)
        warnings.warn(f"cannot build model.{role} on the meta device ({meta_error}); "
                      "built on the CPU instead, which allocates its weights once",
                      stacklevel=2)
        return net.to_empty(device="meta")


def build_empty(model_cfg: Mapping[str, Any], feature_shapes: Mapping[str, Sequence]
                ) -> HybridNet:
    """The hybrid of ``model_cfg`` with every tensor on the meta device (no memory held).

    ``feature_shapes`` (``{"teacher": [...], "student": [...]}``, per boundary)
    size the adapters without running either network.
    """
    check_model_cfg(model_cfg)
    teacher = build_on_meta(model_cfg["teacher"], "teacher")
    student = build_on_meta(model_cfg["student"], "student")
    with torch.device("meta"):
        adapters = Adapters(feature_shapes["teacher"], feature_shapes["student"],
                            model_cfg.get("adapter", "linear"))
    return HybridNet(teacher, student, adapters).eval()


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _write(out: Path, rel: str, tensors: dict[str, torch.Tensor], what: str) -> FileEntry:
    data = save_safetensors_bytes(tensors, metadata={"format": "pt", "pwl": what})
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
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
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / MANIFEST)  # a bundle without a manifest is visibly incomplete
    return out


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The manifest of a bundle, with its layout checked against the files present.

    Checks that every listed file exists with the size the manifest gives, that
    the teacher files are exactly ``teacher/block_0 .. block_{N-1}`` (in the
    manifest and on disk), and that the loading order is valid. Hashes are
    checked when a file is read, and by ``verify``.
    """
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {bundle} is not a bundle (create one "
                              "with `python -m pwl.export checkpoint=<run> out=<dir>`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}); re-export the bundle") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; re-export the bundle")
    version = manifest["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this pwl reads up to "
                              f"{FORMAT_VERSION}, upgrade pwl or re-export the bundle")
    n = manifest["num_blocks"]
    files = manifest["files"]
    if not isinstance(n, int) or n < 2:
        raise CheckpointError(f"{path}: num_blocks={n!r} must be an integer >= 2")
    if STUDENT_FILE not in files:
        raise CheckpointError(f"{path} lists no {STUDENT_FILE}; re-export the bundle")
    expected = {teacher_block_file(i) for i in range(n)}
    listed = set(files) - {STUDENT_FILE}
    unlisted = sorted(expected - listed)
    if unlisted:
        raise CheckpointError(f"{bundle / unlisted[0]}: the manifest says N={n} but does not "
                              "list this file; re-export the bundle")
    extra = sorted(listed - expected)
    if extra:
        raise CheckpointError(f"{bundle / extra[0]} is listed in the manifest, which says "
                              f"N={n}; re-export the bundle")
    on_disk = {p.relative_to(bundle).as_posix()
               for p in (bundle / "teacher").glob("block_*.safetensors")}
    stray = sorted(on_disk - expected)
    if stray:
        raise CheckpointError(f"{bundle / stray[0]} is in the bundle but the manifest says "
                              f"N={n}; remove it or re-export the bundle")
    for rel in sorted(files):
        check_size(bundle / rel, file_entry_of(manifest, rel))
    try:
        loading_masks(manifest["loading_order"], n)
    except MaskError as e:
        raise CheckpointError(f"{path}: loading_order is invalid ({e})") from None
    return manifest


def file_entry_of(manifest: Mapping[str, Any], rel: str) -> FileEntry:
    entry = manifest["files"][rel]
    return FileEntry(int(entry["bytes"]), str(entry["sha256"]))


def verify(bundle_dir: str | Path) -> dict[str, Any]:
    """Checks every file of a bundle (existence, size, sha256) and N; returns the manifest.

    Raises:
        CheckpointError: naming the first file that does not match the manifest.
    """
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    for rel in sorted(manifest["files"]):
        _, sha = read_file(bundle / rel, keep=False)
        check_sha256(bundle / rel, file_entry_of(manifest, rel), sha)
    return manifest


def check_num_blocks(hybrid: HybridNet, manifest: Mapping[str, Any], bundle: Path) -> None:
    if hybrid.num_blocks != manifest["num_blocks"]:
        raise CheckpointError(f"{bundle / MANIFEST} says N={manifest['num_blocks']} but its "
                              f"model config builds N={hybrid.num_blocks} blocks; re-export "
                              "the bundle")


def load_bundle_hybrid(bundle_dir: str | Path) -> tuple[HybridNet, dict[str, Any]]:
    """The whole hybrid of a bundle (every file read and checked) in eval mode, and its config."""
    bundle = Path(bundle_dir)
    manifest = read_manifest(bundle)
    hybrid = build_empty(manifest["model"], manifest["feature_shapes"])
    check_num_blocks(hybrid, manifest, bundle)
    path = bundle / STUDENT_FILE
    assign_student(hybrid, read_tensors(path, file_entry_of(manifest, STUDENT_FILE)), path)
    for i in range(hybrid.num_blocks):
        rel = teacher_block_file(i)
        assign_unit(hybrid.teacher, i, read_tensors(bundle / rel, file_entry_of(manifest, rel)),
                    bundle / rel)
    return hybrid.eval(), manifest["model"]
