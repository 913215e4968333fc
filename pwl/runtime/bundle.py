"""The bundle format: its layout, the typed manifest, its reader and its writer.

Layout (**contract**)::

    manifest.json                   format version, model config, N, default loading
                                    order, size, sha256 and dtype of every file, stage
                                    records (mask, metric, split, precision), parameter
                                    counts, data config, loading plan
    student.safetensors             the student ("student.*"): all the first answer reads
    adapters.safetensors            the adapters ("adapters.*"), read after the first answer
    teacher/block_<i>.safetensors   teacher swap unit i (block 0 carries the stem,
                                    block N-1 the head), stored at the file's dtype

Files hold every tensor a module needs to run: its state dict plus any
non-persistent buffers, so a model built on the meta device can be completed
from the files alone. The manifest is the one source of truth for a file's
size, hash and storage dtype.

A bundle is untrusted data. ``read_manifest`` validates the manifest against
``Manifest`` (types, ranges, no unknown keys) and keeps every file inside the
bundle directory: names are the fixed layout's, relative and normalised, and each
is a regular file (no symbolic links, no devices). Tensor headers are checked
before any tensor is made (``pwl.runtime.storage``); ``pwl.runtime.materialise``
checks a whole bundle against its model (``verify``).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from pwl.atomic import atomic_write_bytes
from pwl.blocks import BlockNet
from pwl.build import check_saved_model_cfg
from pwl.config import Schema, problems_of, to_dict
from pwl.errors import CheckpointError, MaskError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder, validate_mask
from pwl.models.registry import MAX_BLOCKS, MAX_WIDTH
from pwl.precision import DTYPES, check_dtype, quantise
from pwl.runtime.sources import LocalSource, MissingFile, Source, is_url, open_source
from pwl.runtime.storage import FileEntry

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
STUDENT_FILE = "student.safetensors"
ADAPTERS_FILE = "adapters.safetensors"
SIDE_FILES = (STUDENT_FILE, ADAPTERS_FILE)
# A manifest is a few kilobytes; a larger one is not read into memory.
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILE_BYTES = 1 << 42
FIX = "re-export the bundle"

Dim = Annotated[int, Field(ge=1, le=1 << 20)]
FeatureShape = Annotated[list[Dim], Field(min_length=1, max_length=4)]
FeatureShapeList = Annotated[list[FeatureShape], Field(max_length=MAX_BLOCKS)]
Dtype = Literal["fp32", "fp16", "bf16", "int8"]


def teacher_block_file(block: int) -> str:
    """The bundle-relative path of teacher block ``block``."""
    return f"teacher/block_{block}.safetensors"


class FileSchema(Schema):
    """One file of the bundle: its size, its sha256 and its storage dtype."""

    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dtype: Dtype


class FeatureShapes(Schema):
    teacher: FeatureShapeList
    student: FeatureShapeList


class StageRecord(Schema):
    """One stage's metric, with the split it was measured on and the precision of the
    weights it was measured with (the bundle's teacher dtype; the student is fp32)."""

    mask: str = Field(max_length=MAX_BLOCKS)
    k: int = Field(ge=0, le=MAX_BLOCKS)
    accuracy: float = Field(ge=0.0, le=1.0)
    bpc: float | None = Field(default=None, ge=0.0)  # a language model's bits per character
    split: Literal["val", "test"] | None = None
    precision: Dtype | None = None


class Manifest(Schema):
    """``manifest.json``, typed. ``model`` and ``data`` are checked against their registries
    where they are built."""

    format_version: int = Field(ge=FORMAT_VERSION, le=FORMAT_VERSION)
    num_blocks: int = Field(ge=2, le=MAX_BLOCKS)
    model: dict[str, Any]
    feature_shapes: FeatureShapes
    loading_order: list[str] = Field(max_length=MAX_BLOCKS + 1)
    files: dict[str, FileSchema] = Field(max_length=MAX_BLOCKS + 2)
    params: dict[str, int | list[int]] | None = None
    stages: list[StageRecord] = Field(default_factory=list, max_length=1 << 16)
    data: dict[str, Any] | None = None
    plan: list[str] | None = Field(default=None, max_length=MAX_BLOCKS + 1)

    @staticmethod
    def block_file(block: int) -> str:
        return teacher_block_file(block)

    @property
    def teacher_files(self) -> list[str]:
        return [teacher_block_file(i) for i in range(self.num_blocks)]

    def entry(self, rel: str) -> FileEntry:
        info = self.files[rel]
        return FileEntry(info.bytes, info.sha256)

    def dtype(self, rel: str) -> str:
        """The storage dtype of file ``rel``."""
        return self.files[rel].dtype

    @property
    def teacher_dtype(self) -> str:
        return self.dtype(teacher_block_file(0))

    def block_bytes(self) -> list[int]:
        """Bytes of each teacher block's file, block 0 first."""
        return [self.files[rel].bytes for rel in self.teacher_files]

    def teacher_bytes(self) -> int:
        return sum(self.block_bytes())

    def side_bytes(self) -> int:
        """Bytes of the student's and the adapters' files."""
        return sum(self.files[rel].bytes for rel in SIDE_FILES)

    def stage_accuracy(self, mask: str) -> float | None:
        """The recorded accuracy of ``mask``, or None if the bundle has none."""
        return self.stage_accuracies().get(mask)

    def stage_accuracies(self) -> dict[str, float]:
        return {r.mask: r.accuracy for r in self.stages}

    def stage_values(self) -> dict[str, float]:
        """The headline metric per recorded mask: bits per character for a language model
        (its records carry ``bpc``), else accuracy."""
        return {r.mask: r.bpc if r.bpc is not None else r.accuracy for r in self.stages}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- reading -----------------------------------------------------------------------------


def _read_json(source: Source) -> Any:
    """The parsed manifest of a bundle, read through its source and capped in size."""
    path = source.where(MANIFEST)
    try:
        text = source.read_small(MANIFEST, MAX_MANIFEST_BYTES)
    except MissingFile:
        raise CheckpointError(f"{path} does not exist; {source.location} is not a bundle "
                              "(create one with `python -m pwl.export checkpoint=<run> "
                              "out=<dir>`)") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; a manifest "
                              f"is a few kilobytes, {FIX}")
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise CheckpointError(f"{path} is not readable JSON ({reason}); {FIX}") from None


def parse_manifest(data: Any, path: Path | str) -> tuple[Manifest | None, list[str]]:
    """``data`` as a ``Manifest``, or None and every way it breaks the schema."""
    if isinstance(data, dict) and type(data.get("format_version")) is int \
            and data["format_version"] != FORMAT_VERSION:
        return None, [f"{path} has format_version {data['format_version']}; this pwl reads "
                      f"format {FORMAT_VERSION}, re-export the bundle with it"]
    try:
        return Manifest.model_validate(data), []
    except ValidationError as e:
        return None, [f"{path}: {p}; {FIX}" for p in problems_of(e, "")]


def name_problem(bundle: Path | Source, rel: str) -> str | None:
    """Why the manifest's file name ``rel`` may not be read, or None.

    A name must be relative, normalised and inside the bundle; in a directory it must
    name a regular file that is not a symbolic link (nor reached through one). A missing
    file is no problem here (the layout check reports it).
    """
    source = open_source(bundle)
    if (not rel or "\\" in rel or "\x00" in rel or rel.startswith("/")
            or posixpath.normpath(rel) != rel or rel.split("/")[0] == ".."):
        return (f"{source.where(MANIFEST)}: file name {rel[:80]!r} is not a normalised "
                f"relative path inside the bundle; {FIX}")
    if not isinstance(source, LocalSource):
        return None  # a server's files are checked by size and hash as they arrive
    path = os.fspath(source.root)
    for part in rel.split("/"):
        path = os.path.join(path, part)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"cannot read {path}: {e}"
        if stat.S_ISLNK(info.st_mode):
            return (f"{path} is a symbolic link; a bundle holds regular files only, copy "
                    "the file into the bundle")
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file; a bundle holds regular files only, {FIX}"
    return None


def layout_problems(bundle: Path | Source, manifest: Manifest) -> list[str]:
    """Every problem of a valid manifest against the fixed layout, and in a directory
    against the files present (a URL's files are checked as they arrive)."""
    source = open_source(bundle)
    path = source.where(MANIFEST)
    n = manifest.num_blocks
    files = manifest.files
    problems = [p for rel in sorted(files) if (p := name_problem(source, rel))]
    expected = set(SIDE_FILES) | set(manifest.teacher_files)
    problems += [f"{path} lists no {rel} (N={n}); {FIX}" for rel in sorted(expected - set(files))]
    problems += [f"{source.where(rel)} is listed in the manifest, which says N={n}; {FIX}"
                 for rel in sorted(set(files) - expected)]
    if isinstance(source, LocalSource):
        problems += _disk_problems(source.root, manifest, expected)
    return problems + _manifest_problems(path, manifest)


def _disk_problems(bundle: Path, manifest: Manifest, expected: set[str]) -> list[str]:
    """Problems of a bundle directory's files against a valid manifest."""
    n = manifest.num_blocks
    files = manifest.files
    problems = []
    teacher_dir = bundle / "teacher"
    on_disk = ({f"teacher/{name}" for name in os.listdir(teacher_dir)
                if name.startswith("block_") and name.endswith(".safetensors")}
               if teacher_dir.is_dir() and not teacher_dir.is_symlink() else set())
    problems += [f"{bundle / rel} is in the bundle but the manifest says N={n}; remove it or "
                 f"{FIX}" for rel in sorted(on_disk - expected)]
    for rel in sorted(set(files) & expected):
        if name_problem(bundle, rel):
            continue  # reported above
        file = bundle / rel
        if not file.exists():
            problems.append(f"{file} is missing; the bundle's manifest lists it. Re-export "
                            "the bundle with `python -m pwl.export`")
        elif file.stat().st_size != files[rel].bytes:
            problems.append(f"{file} has {file.stat().st_size} bytes but the manifest says "
                            f"{files[rel].bytes}; the file is truncated or replaced, {FIX}")
    return problems


def _manifest_problems(path: str, manifest: Manifest) -> list[str]:
    """Problems of a valid manifest on its own: dtypes, loading orders, shapes, stages."""
    n = manifest.num_blocks
    files = manifest.files
    problems = []
    teacher_dtypes = {files[rel].dtype for rel in manifest.teacher_files if rel in files}
    if len(teacher_dtypes) > 1:
        problems.append(f"{path}: the teacher files have dtypes {sorted(teacher_dtypes)}; "
                        f"a bundle stores its teacher at one dtype, {FIX}")
    problems += [f"{path}: {rel} has dtype {files[rel].dtype}; the student and adapters are "
                 f"stored at fp32, {FIX}" for rel in SIDE_FILES
                 if rel in files and files[rel].dtype != "fp32"]
    for key in ("loading_order", "plan"):
        masks = getattr(manifest, key)
        try:
            if masks is not None:
                LoadingOrder.parse(masks, n).blocks  # noqa: B018 - raises unless loadable
        except MaskError as e:
            problems.append(f"{path}: {key} is invalid ({e})")
    for side in ("teacher", "student"):
        shapes = getattr(manifest.feature_shapes, side)
        if len(shapes) != n - 1:
            problems.append(f"{path}: feature_shapes.{side} has {len(shapes)} entries but N={n} "
                            f"has {n - 1} boundaries; {FIX}")
        elif any(s[0] > MAX_WIDTH for s in shapes):
            problems.append(f"{path}: feature_shapes.{side} has more than {MAX_WIDTH} "
                            f"channels; {FIX}")
    for record in manifest.stages:
        try:
            validate_mask(record.mask, n)
        except MaskError as e:
            problems.append(f"{path}: stages has an invalid mask ({e})")
    return problems


def manifest_problems(bundle: str | Path | Source) -> tuple[Manifest | None, list[str]]:
    """The manifest of ``bundle`` and every problem of it (schema first, then layout)."""
    source = open_source(bundle)
    manifest, problems = parse_manifest(_read_json(source), source.where(MANIFEST))
    if manifest is None:
        return None, problems
    return manifest, layout_problems(source, manifest)


def read_manifest(bundle_dir: str | Path | Source) -> Manifest:
    """The manifest of a bundle (a directory, a URL or a ``Source``), validated and with
    its layout checked.

    Checks the schema, that the teacher files are exactly ``teacher/block_0 ..
    block_{N-1}``, and the loading order; in a directory also that every listed file is
    a regular file inside the bundle with the size the manifest gives, and that no other
    teacher file lies there. Hashes and tensor headers are checked when a file is read
    (a URL's sizes too), and by ``verify``.

    Raises:
        CheckpointError: the first problem found, naming the file or key.
    """
    manifest, problems = manifest_problems(bundle_dir)
    if problems:
        raise CheckpointError(problems[0])
    return manifest


def is_bundle(path: str | Path) -> bool:
    """True if ``path`` is a directory holding a manifest, or a URL (read as a bundle)."""
    if is_url(path):
        return True
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


# --- writing -----------------------------------------------------------------------------


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


def stored_blocks(teacher: BlockNet, dtype: str) -> list[dict[str, torch.Tensor]]:
    """The teacher's swap units as a bundle stores them at ``dtype`` (``pwl.precision``)."""
    check_dtype(dtype)
    blocks = [unit_tensors(teacher, i) for i in range(teacher.num_blocks)]
    outside = sorted(module_tensors(teacher).keys() - set().union(*blocks))
    if outside:
        raise CheckpointError(f"teacher tensors {outside[:3]} belong to no block (not under "
                              "stem., blocks.<i>. or head.); they cannot be loaded per block")
    return [quantise(tensors, dtype) for tensors in blocks]


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _write(out: Path, rel: str, tensors: Mapping[str, torch.Tensor], what: str,
           dtype: str) -> FileSchema:
    data = save_safetensors_bytes(dict(tensors), metadata={"format": "pt", "pwl": what})
    atomic_write_bytes(out / rel, data)
    return FileSchema(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), dtype=dtype)


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
    if out.is_dir() and not is_bundle(out) and any(out.iterdir()):
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


def _publish(staging: Path, out: Path) -> None:
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


def write_bundle(hybrid: HybridNet, model_cfg: Mapping[str, Any], out_dir: str | Path, *,
                 dtype: str = "fp32", loading_order: Sequence[str] | None = None,
                 stages: Sequence[StageRecord] = (), data_cfg: Mapping[str, Any] | None = None,
                 plan: Sequence[str] | None = None) -> Manifest:
    """Writes ``hybrid`` as a bundle at ``out_dir`` and returns its manifest.

    Args:
        hybrid: the trained teacher, student and adapters.
        model_cfg: the model config they were built from (rebuilds them at load).
        out_dir: a new or empty directory, or an earlier bundle (replaced whole).
        dtype: storage precision of the teacher blocks; the student and adapters stay fp32.
        loading_order: the default loading order as masks (all-student first);
            None: prefix.
        stages: stage records measured with the weights as stored at ``dtype``.
        data_cfg: the data config the bundle is evaluated on (``pwl.serve`` streams it).
        plan: a loading plan (masks, from ``pwl.plan``) recorded as the manifest's ``plan``.
    """
    out = Path(out_dir)
    n = hybrid.num_blocks
    model_cfg = to_dict(model_cfg)
    # A bundle is opened as data: a model config it could not be opened with is refused now.
    check_saved_model_cfg(model_cfg, "model_cfg")
    order = LoadingOrder.parse(list(loading_order) if loading_order is not None else "prefix", n)
    order.blocks  # noqa: B018 - raises unless the order is loadable block by block
    plan = list(LoadingOrder.parse(list(plan), n).masks) if plan is not None else None
    for record in stages:
        validate_mask(record.mask, n)
    blocks = stored_blocks(hybrid.teacher, dtype)
    final, out = out, _staging_dir(out)
    try:
        files = {STUDENT_FILE: _write(out, STUDENT_FILE, module_tensors(hybrid.student,
                                                                        "student."),
                                      "student", "fp32"),
                 ADAPTERS_FILE: _write(out, ADAPTERS_FILE, module_tensors(hybrid.adapters,
                                                                          "adapters."),
                                       "adapters", "fp32")}
        for i, tensors in enumerate(blocks):
            files[teacher_block_file(i)] = _write(out, teacher_block_file(i), tensors,
                                                  f"teacher block {i} ({dtype})", dtype)
        manifest = Manifest(
            format_version=FORMAT_VERSION, num_blocks=n, model=model_cfg,
            feature_shapes=FeatureShapes(
                teacher=[list(s) for s in hybrid.adapters.teacher_shapes],
                student=[list(s) for s in hybrid.adapters.student_shapes]),
            loading_order=list(order.masks), files=files,
            params={"teacher": _num_params(hybrid.teacher),
                    "student": _num_params(hybrid.student),
                    "adapters": _num_params(hybrid.adapters),
                    "teacher_blocks": [hybrid.teacher.unit_num_params(i) for i in range(n)]},
            stages=list(stages), data=to_dict(data_cfg) if data_cfg is not None else None,
            plan=plan)
        atomic_write_bytes(out / MANIFEST,
                           (json.dumps(manifest.to_json(), indent=2) + "\n").encode())
        _publish(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return manifest


def copy_bundle(bundle: str | Path | Source, out_dir: str | Path) -> Manifest:
    """Copies a bundle (a directory or a URL) to ``out_dir``, every file checked against its
    manifest first; ``out_dir`` is replaced whole or left as it was, as by ``write_bundle``."""
    source = open_source(bundle)
    manifest = read_manifest(source)
    text = source.read_small(MANIFEST, MAX_MANIFEST_BYTES)
    try:
        same = parse_manifest(json.loads(text.decode("utf-8")), MANIFEST)[0] == manifest
    except ValueError:  # not UTF-8 or not JSON any more
        same = False
    if not same:
        raise CheckpointError(f"{source.where(MANIFEST)} changed while it was read; copy the "
                              "bundle again once its upload has finished")
    final, out = Path(out_dir), _staging_dir(Path(out_dir))
    try:
        for rel in sorted(manifest.files):
            atomic_write_bytes(out / rel, source.read(rel, manifest.entry(rel)))
        atomic_write_bytes(out / MANIFEST, text)
        _publish(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return manifest


__all__ = ["ADAPTERS_FILE", "DTYPES", "FORMAT_VERSION", "MANIFEST", "SIDE_FILES", "STUDENT_FILE",
           "FileSchema", "copy_bundle", "Manifest", "StageRecord", "is_bundle", "module_tensors",
           "read_manifest", "stored_blocks", "teacher_block_file", "unit_tensors",
           "write_bundle"]
