"""Time to first answer and peak memory of one way of loading a model, in a fresh process.

``pwl.bench`` runs every variant as ``python -m pwl.bench_worker '<json spec>'``
so that memory peaks of different variants never mix; the result is printed
as one JSON line. The clock starts after imports (the same for every variant)
and stops when the logits of one image are computed.

Variants:
    teacher_safetensors: the whole teacher from one safetensors file.
    teacher_ckpt: the whole teacher through ``torch.load`` of a Lightning-style
        checkpoint (``state_dict`` with ``net.`` keys, ``hyper_parameters``).
    student_safetensors: the student alone from one safetensors file (built from
        the saved config, tensors assigned): what the bundle's first answer costs
        without PWL.
    bundle: ``ProgressiveModel.open`` of a bundle, the student answering first;
        with ``full`` it then loads every teacher block (in ``order``, the bundle's
        own by default) and answers again, and returns the load's events.
    bundle_url: the same, the bundle opened from its URL (``path`` is the URL); also
        returns the requests made and bytes received before the first answer.
    student_url: the student alone from the same URL: the bundle's student file fetched
        through the same fsspec path (size and sha256 of ``entry`` checked, as the bundle
        checks them) and built, without the manifest; what the URL open's first answer
        costs without PWL (the import of fsspec and aiohttp counts on both sides).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pwl.blocks import BlockNet
from pwl.build import check_saved_model_cfg
from pwl.config import parse_bandwidth
from pwl.errors import ConfigError, PWLError
from pwl.runtime.bundle import STUDENT_FILE
from pwl.runtime.materialise import assign, build_on_meta
from pwl.runtime.progressive import ProgressiveModel
from pwl.runtime.sources import URLSource
from pwl.runtime.storage import FileEntry, Pacer, read_file

VARIANTS = ("teacher_safetensors", "teacher_ckpt", "student_safetensors", "bundle", "bundle_url",
            "student_url")
BUNDLES = ("bundle", "bundle_url")
URLS = ("bundle_url", "student_url")
CKPT_PREFIX = "net."


def memory_status() -> dict[str, int]:
    """Resident size now (VmRSS) and its high-water mark (VmHWM), in bytes; {} off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak() -> None:
    """Resets VmHWM to the current resident size (Linux >= 4.0), so imports do not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the mark then includes the import-time peak, a little above the baseline


def logits_digest(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def load_net_safetensors(path: Path, model_cfg: dict[str, Any], pacer: Pacer, mmap: bool,
                         role: str = "teacher") -> BlockNet:
    """``model.<role>`` from one safetensors file (built on meta, tensors assigned)."""
    from safetensors.torch import load, load_file

    if mmap:
        read_file(path, pacer, keep=False, digest=False)
        tensors = load_file(str(path))
    else:
        data, _ = read_file(path, pacer, digest=False)
        tensors = load(data)
    net = build_on_meta(model_cfg[role], role)
    assign([(net, "")], tensors, path)
    return net.eval()


def load_teacher_ckpt(path: Path, model_cfg: dict[str, Any], pacer: Pacer,
                      mmap: bool) -> BlockNet:
    """The teacher from a Lightning-style checkpoint through ``torch.load``."""
    if mmap:
        read_file(path, pacer, keep=False, digest=False)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    else:
        data, _ = read_file(path, pacer, digest=False)
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    tensors = {k.removeprefix(CKPT_PREFIX): v for k, v in ckpt["state_dict"].items()}
    teacher = build_on_meta(model_cfg["teacher"], "teacher")
    assign([(teacher, "")], tensors, path)
    return teacher.eval()


def load_student_url(url: str, entry: dict[str, Any], model_cfg: dict[str, Any],
                     pacer: Pacer) -> tuple[BlockNet, URLSource]:
    """The student alone from a bundle's URL (its file checked against ``entry``), and the
    source that fetched it (its request and byte counts)."""
    from safetensors.torch import load

    source = URLSource(url)
    data = source.read(STUDENT_FILE, FileEntry(int(entry["bytes"]), str(entry["sha256"])), pacer)
    net = build_on_meta(model_cfg["student"], "student", url)
    assign([(net, "student.")], load(data), source.where(STUDENT_FILE))
    return net.eval(), source


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one variant (see the module docstring) and returns its timings and memory.

    Args:
        spec: variant, path (file or bundle dir), model_cfg, bandwidth (bytes/s or
            None), mmap, full (bundle: also load the whole teacher), order (bundle: the
            loading order, a list of masks; None for the bundle's), threads, seed.

    Returns:
        first_answer_s, peak_bytes (rise of VmHWM over the resident size before
        loading), logits digest, and for the bundle full_answer_s / full_peak_bytes
        and events ([t, mask] per stage, seconds since open), event_bytes (read per
        stage) and loading_started_s; for a URL the requests and bytes before the first answer.
    """
    variant = spec["variant"]
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r} is unknown; use one of {list(VARIANTS)}")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    model_cfg = spec["model_cfg"]
    check_saved_model_cfg(model_cfg, "spec.model_cfg")
    rate = parse_bandwidth(spec.get("bandwidth"))
    mmap = bool(spec.get("mmap", False))
    path = spec["path"] if variant in URLS else Path(spec["path"])
    generator = torch.Generator().manual_seed(spec.get("seed", 0))
    vocab = model_cfg["teacher"].get("vocab_size")
    # a language model reads token ids, an image model pixels
    x = (torch.randint(int(vocab), (1, *model_cfg["input_shape"]), generator=generator)
         if vocab else torch.randn(1, *model_cfg["input_shape"], generator=generator))
    torch.set_grad_enabled(False)
    reset_peak()
    baseline = memory_status().get("VmRSS", 0)
    began = time.perf_counter()
    if variant in BUNDLES:
        model = ProgressiveModel.open(path, bandwidth=rate, mmap=mmap,
                                      connections=int(spec.get("connections") or 1))
        logits = model.predict(x)
        first_requests = getattr(model.source, "requests", None)
        first_bytes = getattr(model.source, "bytes", None)
    elif variant == "student_url":
        student, source = load_student_url(path, spec["entry"], model_cfg, Pacer(rate))
        logits = student(x)
        first_requests, first_bytes = source.requests, source.bytes
    elif variant == "teacher_ckpt":
        logits = load_teacher_ckpt(path, model_cfg, Pacer(rate), mmap)(x)
    else:
        role = "student" if variant == "student_safetensors" else "teacher"
        logits = load_net_safetensors(path, model_cfg, Pacer(rate), mmap, role)(x)
    first = time.perf_counter() - began
    result = {"variant": variant, "first_answer_s": first,
              "peak_bytes": memory_status().get("VmHWM", baseline) - baseline,
              "logits": logits_digest(logits), "full_answer_s": first}
    result["full_peak_bytes"] = result["peak_bytes"]
    result["full_logits"] = result["logits"]
    if variant in URLS:
        result.update(first_requests=first_requests, first_bytes_received=first_bytes)
    if variant in BUNDLES and spec.get("full", True):
        loading_started = model.elapsed()
        model.start_loading(spec.get("order"))
        model.wait()
        logits = model.predict(x)
        # The events' clock starts at open, as the first answer's does.
        result.update(full_answer_s=time.perf_counter() - began,
                      full_peak_bytes=memory_status().get("VmHWM", baseline) - baseline,
                      full_logits=logits_digest(logits), final_mask=model.mask,
                      loading_started_s=loading_started,
                      events=[[e.t, e.mask] for e in model.events if e.error is None],
                      event_bytes=[e.bytes_read for e in model.events if e.error is None])
    return result


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m pwl.bench_worker '<json spec>'", file=sys.stderr)
        sys.exit(2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = measure(json.loads(sys.argv[1]))
        result["warnings"] = sorted({str(w.message) for w in caught})
    except PWLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
