"""Deployment runtime: only what an app that loads a bundle imports.

``manifest`` reads and verifies the bundle format, ``materialise`` builds a
model on the meta device and fills it from shards, ``ProgressiveModel``
answers from the student at once and streams the teacher blocks in, and
``storage`` reads files with checks and an optional bandwidth limit.
Bundles are written by ``pwl.export``.
"""

from pwl.config import parse_bandwidth
from pwl.runtime.manifest import (
    ADAPTERS_FILE,
    MANIFEST,
    STUDENT_FILE,
    BundleError,
    read_manifest,
    teacher_block_file,
    verify,
)
from pwl.runtime.materialise import load_bundle_hybrid
from pwl.runtime.progressive import LoadEvent, ProgressiveModel

__all__ = ["ADAPTERS_FILE", "MANIFEST", "STUDENT_FILE", "BundleError", "LoadEvent",
           "ProgressiveModel", "load_bundle_hybrid", "parse_bandwidth", "read_manifest", "teacher_block_file",
           "verify"]
