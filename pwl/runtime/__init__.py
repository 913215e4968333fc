"""Deployment runtime: only what an app that loads a bundle imports.

``bundle`` owns the bundle format (the typed ``Manifest``, its reader and its
writer), ``materialise`` builds a model on the meta device and fills it from a
bundle's files (and ``verify`` checks a whole bundle), ``ProgressiveModel``
answers from the student at once and streams the teacher blocks in, and
``storage`` reads files with checks and an optional bandwidth limit, and
``sources`` reads a bundle from a directory or a URL (with an optional cache).
"""

from pwl.runtime.bundle import (
    ADAPTERS_FILE,
    MANIFEST,
    STUDENT_FILE,
    Manifest,
    StageRecord,
    copy_bundle,
    is_bundle,
    read_manifest,
    teacher_block_file,
    write_bundle,
)
from pwl.runtime.materialise import BundleError, load_bundle_hybrid, verify
from pwl.runtime.progressive import LoadEvent, ProgressiveModel
from pwl.runtime.sources import Cache, LocalSource, Source, URLSource, is_url, open_source

__all__ = ["ADAPTERS_FILE", "MANIFEST", "STUDENT_FILE", "BundleError", "Cache", "LoadEvent",
           "LocalSource", "Manifest", "ProgressiveModel", "Source", "StageRecord", "URLSource",
           "copy_bundle", "is_bundle", "is_url", "load_bundle_hybrid", "open_source", "read_manifest",
           "teacher_block_file", "verify", "write_bundle"]
