"""The bundle format: its layout, the manifest, and checking a bundle against it.

Layout (**contract**)::

    manifest.json                   format version, model config, N, default loading
                                    order, size and sha256 of every file, stage
                                    accuracies, parameter counts, data config
    student.safetensors             student ("student.*") and adapters ("adapters.*")
    teacher/block_<i>.safetensors   teacher swap unit i (block 0 carries the stem,
                                    block N-1 the head); keys as in the teacher

Files hold every tensor a module needs to run: its state dict plus any
non-persistent buffers, so a model built on the meta device can be completed
from the files alone. ``pwl.export`` writes bundles; this module reads them.

A bundle is untrusted data. ``read_manifest`` validates the manifest against a
schema (types, ranges, no unknown keys; a per-file ``dtype`` and a loading
``plan`` are optional) and keeps every file inside the bundle directory: names
are the fixed layout's, relative and normalised, and each is a regular file
(no symbolic links, no devices). Tensor headers are checked before any tensor
is made (``pwl.runtime.storage.parse_header``). ``verify`` reports every
problem it finds in one error.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from pwl.config import Schema, problems_of
from pwl.errors import CheckpointError, MaskError, PWLError
from pwl.masks import loading_masks
from pwl.models.registry import MAX_BLOCKS, MAX_WIDTH
from pwl.runtime.storage import (
    MAX_HEADER,
    FileEntry,
    check_sha256,
    header_length,
    open_regular,
    parse_header,
    read_file,
)

# 2: the adapters have a file of their own, read after the first answer (1: they were in
# the student file). Both are read.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
STUDENT_FILE = "student.safetensors"
ADAPTERS_FILE = "adapters.safetensors"
REQUIRED_KEYS = ("format_version", "num_blocks", "model", "feature_shapes", "loading_order",
                 "files")
# A manifest is a few kilobytes; a larger one is not read into memory.
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILE_BYTES = 1 << 42
FIX = "re-export the bundle"

Dim = Annotated[int, Field(ge=1, le=1 << 20)]
FeatureShape = Annotated[list[Dim], Field(min_length=1, max_length=4)]
FeatureShapeList = Annotated[list[FeatureShape], Field(max_length=MAX_BLOCKS)]


class FileSchema(Schema):
    """One file of the bundle: its size, its sha256 and (optionally) its storage dtype."""

    bytes: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dtype: Literal["fp32", "fp16", "bf16", "int8"] | None = None


class FeatureShapes(Schema):
    teacher: FeatureShapeList
    student: FeatureShapeList


class StageSchema(Schema):
    mask: str = Field(max_length=MAX_BLOCKS)
    k: int = Field(ge=0, le=MAX_BLOCKS)
    accuracy: float = Field(ge=0.0, le=1.0)


class ManifestSchema(Schema):
    """``manifest.json``. ``model`` and ``data`` are checked against their registries where
    they are built; ``plan`` by the planner that reads it."""

    format_version: int = Field(ge=1, le=FORMAT_VERSION)
    num_blocks: int = Field(ge=2, le=MAX_BLOCKS)
    model: dict[str, Any]
    feature_shapes: FeatureShapes
    loading_order: list[str] = Field(max_length=MAX_BLOCKS + 1)
    files: dict[str, FileSchema] = Field(max_length=MAX_BLOCKS + 1)
    params: dict[str, int | list[int]] | None = None
    stages: list[StageSchema] | None = None
    data: dict[str, Any] | None = None
    plan: dict[str, Any] | list[Any] | None = None


def teacher_block_file(block: int) -> str:
    """The bundle-relative path of teacher block ``block``."""
    return f"teacher/block_{block}.safetensors"


def _load_manifest(bundle: Path) -> Any:
    """The parsed ``manifest.json`` of ``bundle``; a missing one says how to make a bundle."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {bundle} is not a bundle (create one "
                              "with `python -m pwl.export checkpoint=<run> out=<dir>`)")
    return _load_json(path)


def _load_json(path: Path) -> Any:
    """The JSON of ``path``, read through ``open_regular`` and capped in size."""
    with open_regular(path) as f:
        text = f.read(MAX_MANIFEST_BYTES + 1)
    if len(text) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; a manifest "
                              f"is a few kilobytes, {FIX}")
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise CheckpointError(f"{path} is not readable JSON ({reason}); {FIX}") from None


def name_problem(bundle: Path, rel: str) -> str | None:
    """Why the manifest's file name ``rel`` may not be read, or None.

    A name must be relative, normalised and inside the bundle, and name a regular
    file that is not a symbolic link (nor reached through one).
    """
    return _checked_stat(bundle, rel)[0]


def _checked_stat(bundle: Path, rel: str) -> tuple[str | None, os.stat_result | None]:
    """``name_problem`` of ``rel``, and the file's own ``lstat`` (None if it is missing
    or a problem was found), so the layout check needs no second system call."""
    if (not rel or "\\" in rel or "\x00" in rel or rel.startswith("/")
            or posixpath.normpath(rel) != rel or rel.split("/")[0] == ".."):
        return (f"{bundle / MANIFEST}: file name {rel[:80]!r} is not a normalised relative "
                f"path inside the bundle; {FIX}"), None
    path = os.fspath(bundle)
    for part in rel.split("/"):
        path = os.path.join(path, part)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None, None  # reported as missing by the layout check
        except OSError as e:
            return f"cannot read {path}: {e}", None
        if stat.S_ISLNK(info.st_mode):
            return (f"{path} is a symbolic link; a bundle holds regular files only, copy "
                    "the file into the bundle"), None
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file; a bundle holds regular files only, {FIX}", None
    return None, info


def schema_problems(bundle: Path, manifest: Any) -> list[str]:
    """Every way a parsed manifest breaks its schema (all are listed)."""
    path = bundle / MANIFEST
    if not isinstance(manifest, dict):
        return [f"{path} is not a JSON object; {FIX}"]
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        return [f"{path} lacks {missing}; {FIX}"]
    version = manifest["format_version"]
    if type(version) is int and version > FORMAT_VERSION:
        return [f"{path} has format_version {version!r}; this pwl reads up to "
                f"{FORMAT_VERSION}, upgrade pwl or re-export the bundle"]
    try:
        ManifestSchema.model_validate(manifest)
    except ValidationError as e:
        return [f"{path}: {p}; {FIX}" for p in problems_of(e, "")]
    return []


def layout_problems(bundle: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Every problem of a manifest that meets its schema against the layout and the files."""
    path = bundle / MANIFEST
    n = manifest["num_blocks"]
    files = manifest["files"]
    checked = {rel: _checked_stat(bundle, rel) for rel in sorted(files)}
    problems = [p for p, _ in checked.values() if p]
    side = side_files(manifest)
    problems += [f"{path} lists no {rel}; {FIX}" for rel in sorted(side - set(files))]
    expected = {teacher_block_file(i) for i in range(n)}
    listed = set(files) - side
    problems += [f"{bundle / rel}: the manifest says N={n} but does not list this file; {FIX}"
                 for rel in sorted(expected - listed)]
    problems += [f"{bundle / rel} is listed in the manifest, which says N={n}; {FIX}"
                 for rel in sorted(listed - expected)]
    teacher_dir = bundle / "teacher"
    on_disk = ({f"teacher/{name}" for name in os.listdir(teacher_dir)
                if name.startswith("block_") and name.endswith(".safetensors")}
               if teacher_dir.is_dir() and not teacher_dir.is_symlink() else set())
    problems += [f"{bundle / rel} is in the bundle but the manifest says N={n}; remove it or "
                 "re-export the bundle" for rel in sorted(on_disk - expected)]
    for rel in sorted(set(files) & (expected | side)):
        problem, info = checked[rel]
        if problem:
            continue  # reported above
        if info is None:
            problems.append(f"{bundle / rel} is missing; the bundle's manifest lists it. "
                            "Re-export the bundle with `python -m pwl.export`")
        elif info.st_size != files[rel]["bytes"]:
            problems.append(f"{bundle / rel} has {info.st_size} bytes but the manifest says "
                            f"{files[rel]['bytes']}; the file is truncated or replaced, {FIX}")
    try:
        loading_masks(manifest["loading_order"], n)
    except MaskError as e:
        problems.append(f"{path}: loading_order is invalid ({e})")
    for side in ("teacher", "student"):
        shapes = manifest["feature_shapes"][side]
        if len(shapes) != n - 1:
            problems.append(f"{path}: feature_shapes.{side} has {len(shapes)} entries but N={n} "
                            f"has {n - 1} boundaries; {FIX}")
        elif any(s[0] > MAX_WIDTH for s in shapes):
            problems.append(f"{path}: feature_shapes.{side} has more than {MAX_WIDTH} "
                            f"channels; {FIX}")
    return problems


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The manifest of a bundle, validated and with its layout checked against the files present.

    Checks the manifest's schema, that every listed file is a regular file inside the
    bundle with the size the manifest gives, that the teacher files are exactly
    ``teacher/block_0 .. block_{N-1}`` (in the manifest and on disk), and that the
    loading order is valid. Hashes and tensor headers are checked when a file is
    read, and by ``verify``.

    Raises:
        CheckpointError: the first problem found, naming the file or key.
    """
    bundle = Path(bundle_dir)
    manifest = _load_manifest(bundle)
    problems = schema_problems(bundle, manifest) or layout_problems(bundle, manifest)
    if problems:
        raise CheckpointError(problems[0])
    return manifest


def side_files(manifest: Mapping[str, Any]) -> set[str]:
    """The bundle's files besides the teacher blocks: the student's, and from format 2 on
    the adapters' (format 1 kept the adapters in the student file)."""
    return {STUDENT_FILE} if manifest["format_version"] < 2 else {STUDENT_FILE, ADAPTERS_FILE}


def adapters_file_of(manifest: Mapping[str, Any]) -> str:
    """The file that holds the adapters."""
    return ADAPTERS_FILE if ADAPTERS_FILE in side_files(manifest) else STUDENT_FILE


def file_entry_of(manifest: Mapping[str, Any], rel: str) -> FileEntry:
    entry = manifest["files"][rel]
    return FileEntry(int(entry["bytes"]), str(entry["sha256"]))


def stored_as_model(manifest: Mapping[str, Any], rel: str) -> bool:
    """True if file ``rel`` holds the model's tensors as they are (not stored below fp32)."""
    return manifest["files"][rel].get("dtype") in (None, "fp32")


class BundleError(CheckpointError):
    """A bundle failed ``verify``; ``problems`` lists every problem found, one line each."""

    def __init__(self, bundle: Path, problems: list[str]) -> None:
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        super().__init__(f"{bundle} fails verification with {count}; first: {problems[0]}\n"
                         + "\n".join(f"  - {p}" for p in problems))


def _file_problems(bundle: Path, manifest: Mapping[str, Any], rel: str,
                   expected: Mapping[str, Any] | None) -> list[str]:
    """Problems of one file: its sha256, its safetensors header, and its tensors vs the model."""
    from pwl.runtime.storage import check_header

    path = bundle / rel
    entry = file_entry_of(manifest, rel)
    try:
        _, sha = read_file(path, keep=False, limit=entry.bytes, regular_only=True)
        check_sha256(path, entry, sha)
        with open_regular(path) as f:
            prefix = f.read(8)
            head = prefix + f.read(min(header_length(prefix, entry.bytes, path), MAX_HEADER))
        header = parse_header(head, entry.bytes, path)
        if expected is not None:
            check_header(header, expected, path)
    except CheckpointError as e:
        return [str(e)]
    return []


def verify(bundle_dir: str | Path) -> dict[str, Any]:
    """Checks a whole bundle and returns its manifest.

    Checks the manifest (schema, names, layout, sizes, loading order), its model config
    against the registered builders, and every file: sha256, safetensors header, and
    tensor names, shapes and dtypes against the model the manifest describes.

    Raises:
        BundleError: listing every problem found (one per line, the first line a summary).
    """
    # Imported here: materialise reads manifests, so a module-level import would cycle.
    from pwl.runtime.materialise import build_empty, expected_tensors

    bundle = Path(bundle_dir)
    path = bundle / MANIFEST
    manifest = _load_manifest(bundle)
    problems = schema_problems(bundle, manifest)
    if problems:
        # the files cannot be checked against a manifest that is not one
        raise BundleError(bundle, problems)
    problems = layout_problems(bundle, manifest)
    hybrid = None
    try:
        hybrid = build_empty(manifest["model"], manifest["feature_shapes"], path)
        if hybrid.num_blocks != manifest["num_blocks"]:
            problems.append(f"{path} says N={manifest['num_blocks']} but its model config "
                            f"builds N={hybrid.num_blocks} blocks; {FIX}")
            hybrid = None
    except PWLError as e:
        problems.append(str(e))
    for rel in sorted(manifest["files"]):
        if _checked_stat(bundle, rel)[1] is None:
            continue  # missing or not a regular file: reported by the layout check
        expected = (expected_tensors(hybrid, rel, manifest) if hybrid is not None
                    and stored_as_model(manifest, rel) else None)
        problems += _file_problems(bundle, manifest, rel, expected)
    if problems:
        raise BundleError(bundle, problems)
    return manifest
