"""Deployment runtime: bundles of per-block weight files, and a model that loads them progressively.

``export_bundle`` writes a bundle, ``verify`` checks it, ``load_bundle_hybrid``
reads it whole; ``ProgressiveModel.open`` answers from the student at once and
``start_loading`` streams the teacher blocks in.
"""

from pwl.runtime.bundle import (
    MANIFEST,
    STUDENT_FILE,
    export_bundle,
    load_bundle_hybrid,
    loading_masks,
    read_manifest,
    teacher_block_file,
    verify,
)
from pwl.runtime.progressive import LoadEvent, ProgressiveModel
from pwl.runtime.storage import parse_bandwidth

__all__ = ["MANIFEST", "STUDENT_FILE", "LoadEvent", "ProgressiveModel", "export_bundle",
           "load_bundle_hybrid", "loading_masks", "parse_bandwidth", "read_manifest",
           "teacher_block_file", "verify"]
