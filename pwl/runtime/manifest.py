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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pwl.errors import CheckpointError, MaskError
from pwl.masks import loading_masks
from pwl.runtime.storage import FileEntry, check_sha256, check_size, read_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STUDENT_FILE = "student.safetensors"
REQUIRED_KEYS = ("format_version", "num_blocks", "model", "feature_shapes", "loading_order",
                 "files")


def teacher_block_file(block: int) -> str:
    """The bundle-relative path of teacher block ``block``."""
    return f"teacher/block_{block}.safetensors"


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
