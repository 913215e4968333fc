"""Deployment runtime: only what an app that loads a bundle imports.

``bundle`` owns the bundle format (the typed ``Manifest``, its reader and its
writer), ``materialise`` builds a model on the meta device and fills it from a
bundle's files (and ``verify`` checks a whole bundle), ``ProgressiveModel``
answers from the student at once and streams the teacher blocks in, and
``storage`` reads files with checks and an optional bandwidth limit.
"""

from pwl.runtime.bundle import (
    ADAPTERS_FILE,
    MANIFEST,
    STUDENT_FILE,
    Manifest,
    StageRecord,
    is_bundle,
    read_manifest,
    teacher_block_file,
    write_bundle,
)
from pwl.runtime.materialise import BundleError, load_bundle_hybrid, verify
from pwl.runtime.progressive import LoadEvent, ProgressiveModel

__all__ = ["ADAPTERS_FILE", "MANIFEST", "STUDENT_FILE", "BundleError", "LoadEvent", "Manifest",
           "ProgressiveModel", "StageRecord", "is_bundle", "load_bundle_hybrid", "read_manifest",
           "teacher_block_file", "verify", "write_bundle"]
