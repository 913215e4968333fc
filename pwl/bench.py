"""Load-time benchmark: how much sooner, and in how much less memory, the bundle answers.

    python -m pwl.bench                          # random-weight ViT-B/16 pair, 224 px, N=4
    python -m pwl.bench bundle=<dir>             # and a trained bundle
    python -m pwl.bench random_pair=false bundle=<dir> bandwidths=[null,20MB]
    python -m pwl.bench random_pair=false bundle=http://host/path/bundle/

For every target and read rate it measures, each variant in a fresh process
(``pwl.bench_worker``): (a) the whole teacher from one safetensors file,
(b) the whole teacher through ``torch.load`` of a Lightning-style checkpoint,
(c) the student alone from one safetensors file, (d) the bundle, student first.
Times to first answer and peak memory are given as ratios to (a), beside the
bytes ratio (bytes read before the first answer over the teacher file's), the
floor a loader could reach; the bundle's first answer is also given over (c),
the start-up cost of PWL itself. The bundle also checks the sha256 of every
file it reads; the other variants do not. A bundle given by URL is first copied
(checked) into the work directory and measured from there, and (e) opened from
its URL is measured beside it: ``bundle_ratio`` and ``bundle_full_ratio`` give its
first answer and its all-teacher answer over the local bundle's, paired by round; (f) the
student alone from the same URL (its file through the same fsspec path) is what the URL
open's first answer is set against (``student_delta_ms``).

Over a throttled server, ``link_rate=`` says the rate it holds each connection to
(nginx's ``limit_rate``): the local variants then read at that rate (``bandwidth=``
emulation) while the URL ones take the link's own, and each bundle's row gives its link
use (teacher bytes / (load time x rate)), its time to the teacher's accuracy and the
area under its accuracy over time (the manifest's stage accuracies) over the teacher's
load time at that rate, counted from the open (``mean_accuracy_window``, as ``pwl.serve``)
and from the first answer (``mean_accuracy_answered``: how the blocks arrived, without the
start-up), with the URL's area over the emulated one's (``area_ratio``,
``area_ratio_answered``). ``variants=`` measures a subset.

For a language-model bundle (``gen_tokens`` > 0), the bundle's first answer is its time to
first token, and ``generation.csv``/``generation.json`` give the tokens per second at each
stage of its loading order (``generation_rows``).

The accuracy-over-time half (each dtype, each order) is a research script:
``experiments/curves.py``. ``bench.csv`` and ``bench.json`` go to the run directory.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning
import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from scipy import stats

from pwl.bench_worker import BUNDLES, CKPT_PREFIX, VARIANTS
from pwl.build import build_hybrid
from pwl.cli import CONF_DIR, human_bytes, make_console, run_dir, user_errors_as_one_line
from pwl.config import parse_bandwidth
from pwl.errors import ConfigError, PWLError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder
from pwl.runtime.bundle import (
    STUDENT_FILE,
    copy_bundle,
    module_tensors,
    read_manifest,
    write_bundle,
)
from pwl.runtime.materialise import load_bundle_hybrid
from pwl.runtime.progressive import next_tokens
from pwl.runtime.sources import is_url
from pwl.schemas import check_app_config
from pwl.stages.curves import LoadCurve, load_curve

COLUMNS = ("target", "bandwidth", "variant", "bytes_read", "bytes_ratio", "first_answer_s",
           "first_answer_ratio", "student_ratio", "student_ratio_low",
           "student_ratio_high", "peak_mb", "peak_ratio", "full_answer_s",
           "full_peak_mb", "same_logits", "bundle_ratio", "bundle_full_ratio",
           "first_requests", "first_bytes_received", "student_delta_ms",
           "student_delta_ms_low", "student_delta_ms_high", "link_rate", "link_use",
           "time_to_teacher_s", "window_s", "mean_accuracy_window", "mean_accuracy_load",
           "area_ratio", "mean_accuracy_answered", "area_ratio_answered", "connections")
GENERATION_COLUMNS = ("target", "stage", "mask", "tokens", "repeats", "tokens_per_s",
                      "tokens_per_s_low", "tokens_per_s_high", "first_token_s")
STUDENT_ALONE = "student_safetensors"
URL_VARIANTS = ("bundle_url", "student_url")
# The student alone each variant's first answer is set against: from the same place.
SAME_PLACE_STUDENT = {"bundle_url": "student_url", "student_url": "student_url"}


@dataclass(frozen=True)
class Target:
    """A pair in four forms: a bundle, the teacher as one safetensors file and as a
    Lightning-style checkpoint, and the student alone as one safetensors file."""

    name: str
    bundle: Path
    teacher_file: Path
    ckpt_file: Path
    student_file: Path
    model_cfg: dict[str, Any]
    url: str | None = None  # where the same bundle is served

    @property
    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v not in URL_VARIANTS or self.url is not None]

    def path(self, variant: str) -> Path | str:
        return {"teacher_safetensors": self.teacher_file, "teacher_ckpt": self.ckpt_file,
                STUDENT_ALONE: self.student_file, "bundle": self.bundle,
                "bundle_url": self.url, "student_url": self.url}[variant]

    def files(self, variant: str) -> list[Path]:
        path = {"bundle_url": self.bundle,
                "student_url": self.bundle / STUDENT_FILE}.get(variant) or self.path(variant)
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def write_reference_files(hybrid: HybridNet, model_cfg: Mapping[str, Any], out_dir: Path
                          ) -> tuple[Path, Path, Path]:
    """The teacher as one safetensors file and as a Lightning-style checkpoint, and the
    student alone (no adapters) as one safetensors file."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = module_tensors(hybrid.teacher)
    st_path, ckpt_path = out_dir / "teacher.safetensors", out_dir / "teacher.ckpt"
    student_path = out_dir / "student.safetensors"
    save_file(tensors, str(st_path))
    torch.save({"state_dict": {CKPT_PREFIX + k: v for k, v in tensors.items()},
                "hyper_parameters": {"model_cfg": dict(model_cfg)},
                "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": lightning.__version__}, ckpt_path)
    save_file(module_tensors(hybrid.student), str(student_path))
    return st_path, ckpt_path, student_path


def bundle_target(bundle: Path | str, workdir: Path) -> Target:
    """A target from an exported bundle; its teacher and its student are also written
    whole into ``workdir``. A bundle URL is copied (checked) into ``workdir`` first."""
    url = bundle if is_url(bundle) else None
    if url is not None:
        bundle = workdir / "bundle"
        copy_bundle(url, bundle)
    hybrid, model_cfg = load_bundle_hybrid(bundle)
    return Target(url or bundle.name or str(bundle), bundle,
                  *write_reference_files(hybrid, model_cfg, workdir), model_cfg, url)


def random_pair_cfg(pair: Mapping[str, Any]) -> dict[str, Any]:
    """The model config of a ViT teacher/student pair from ``bench.pair``."""
    common = {"_target_": "pwl.models.vit", "img_size": pair["img_size"],
              "patch_size": pair["patch_size"], "in_chans": 3,
              "num_classes": pair["num_classes"], "num_blocks": pair["num_blocks"]}
    teacher, student = dict(pair["teacher"]), dict(pair["student"])
    return {"name": (f"vit{teacher['embed_dim']}x{teacher['depth']}-"
                     f"vit{student['embed_dim']}x{student['depth']}-random"),
            "adapter": "linear", "input_shape": [3, pair["img_size"], pair["img_size"]],
            "teacher": {**common, **teacher}, "student": {**common, **student}}


def random_pair_target(pair: Mapping[str, Any], workdir: Path) -> Target:
    """A random-weight pair written as a bundle and as whole-teacher files into ``workdir``."""
    model_cfg = random_pair_cfg(pair)
    hybrid = build_hybrid(model_cfg).eval()
    bundle = workdir / "bundle"
    write_bundle(hybrid, model_cfg, bundle)
    return Target(model_cfg["name"], bundle, *write_reference_files(hybrid, model_cfg, workdir),
                  model_cfg)


def evict(paths: Iterable[Path]) -> None:
    """Drops files from the page cache, so the next read comes from the storage."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_variant(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Runs ``pwl.bench_worker`` in a fresh process and returns its result."""
    proc = subprocess.run([sys.executable, "-m", "pwl.bench_worker", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PWLError(f"measuring {spec['variant']} on {spec['path']} failed "
                       f"(exit {proc.returncode}): {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for message in result.get("warnings", []):
        # e.g. a model that cannot be built on meta: its numbers include a full allocation
        warnings.warn(f"{spec['variant']}: {message}", stacklevel=2)
    return result


def _median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    result = dict(runs[0])
    for key in ("first_answer_s", "peak_bytes", "full_answer_s", "full_peak_bytes"):
        result[key] = statistics.median(r[key] for r in runs)
    return result


def median_interval(values: Sequence[float],
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` and its 95% bootstrap interval; NaN bounds with fewer than 3."""
    values = np.asarray(values, dtype=float)
    median = float(np.median(values))
    if len(values) < 3:
        return median, math.nan, math.nan
    if np.ptp(values) == 0:  # every round gave the same value (the student over itself)
        return median, median, median
    interval = stats.bootstrap((values,), np.median, confidence_level=confidence,
                               method="percentile", rng=np.random.default_rng(0)
                               ).confidence_interval
    return median, float(interval.low), float(interval.high)


def paired_ratio(times: Sequence[float], base: Sequence[float]) -> tuple[float, float, float]:
    """The median of ``times[i] / base[i]`` (runs of the same round) and its interval.

    Paired by round, so a drift of the machine between rounds cancels out of each ratio.
    """
    return median_interval(np.asarray(times, dtype=float) / np.asarray(base, dtype=float))


def paired_difference(times: Sequence[float],
                      base: Sequence[float]) -> tuple[float, float, float]:
    """The median of ``times[i] - base[i]`` (runs of the same round) and its interval."""
    return median_interval(np.asarray(times, dtype=float) - np.asarray(base, dtype=float))


def link_use(run: Mapping[str, Any], rate: float | None) -> float | None:
    """Bytes read after the first answer (adapters and teacher) over (the time from the
    start of loading to the last block x ``rate``): 1 when the load kept the link full."""
    if rate is None or "event_bytes" not in run or len(run["events"]) < 2:
        return None
    seconds = run["events"][-1][0] - run["loading_started_s"]
    return sum(run["event_bytes"][1:]) / (seconds * rate) if seconds > 0 else None


def run_curve(run: Mapping[str, Any], accuracy: Mapping[str, float],
              window_s: float | None, from_answer: bool = False) -> LoadCurve | None:
    """The accuracy over time of one bundle run (``load_curve``), None without the stage
    accuracies of its masks (e.g. a random-weight pair) or without its load.

    ``from_answer``: its clock starts at the first answer instead of the open.
    """
    if "events" not in run or any(mask not in accuracy for _, mask in run["events"]):
        return None
    start = run["first_answer_s"] if from_answer else 0.0
    return load_curve([(t - start, mask) for t, mask in run["events"]], accuracy,
                      run["first_answer_s"] - start, window_s)


def _median_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def measure_target(target: Target, bandwidth: float | str | None = None, mmap: bool = False,
                   cold: bool = True, full: bool = True, threads: int | None = None,
                   repeats: int = 1, link_rate: float | str | None = None,
                   variants: Sequence[str] | None = None,
                   connections: int = 1) -> list[dict[str, Any]]:
    """One row per variant: times, peaks, and their ratios to ``teacher_safetensors``.

    ``link_rate``: the rate the server holds a URL's connection to; the local variants
    then read at it (emulated) and the URL variants unpaced. ``variants``: those of
    ``target.variants`` to measure (None: all); ratios to a variant left out are NaN.
    ``connections``: files a bundle reads at once while loading (its link use can then
    reach ``connections``, the server's rate being per connection).

    ``student_ratio`` is the first answer over the student alone's: the median over
    rounds of the two times of one round (``paired_ratio``), with the bounds of its 95%
    interval in ``student_ratio_low``/``student_ratio_high``. ``same_logits``:
    for the student alone, its logits equal the bundle's first answer; for the others,
    the all-teacher logits equal those of the teacher from one safetensors file.
    ``student_delta_ms``: the first answer minus the student alone's from the same place
    (``student_url`` for a URL, ``student_safetensors`` on disk), paired by round.
    """
    rate = parse_bandwidth(bandwidth)
    link = parse_bandwidth(link_rate, "link_rate")
    unknown = [v for v in variants or [] if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"variants: {unknown[0]!r} is unknown; pick from {list(VARIANTS)}")
    chosen = [v for v in target.variants if variants is None or v in variants]
    if not chosen:
        raise ConfigError(f"variants={list(variants or [])} leaves nothing to measure for "
                          f"{target.name}; pick from {target.variants}")
    manifest = read_manifest(target.bundle)
    teacher_bytes = target.teacher_file.stat().st_size
    student_entry = manifest.files[STUDENT_FILE]
    first_bytes = {"teacher_safetensors": teacher_bytes,
                   "teacher_ckpt": target.ckpt_file.stat().st_size,
                   STUDENT_ALONE: target.student_file.stat().st_size,
                   "bundle": student_entry.bytes, "bundle_url": student_entry.bytes,
                   "student_url": student_entry.bytes}

    def rate_of(variant: str) -> float | None:
        """The pace a variant's reads are given: a URL's link is the server's own."""
        return rate if variant in URL_VARIANTS or rate else link

    def held_rate(variant: str) -> float | None:
        """The rate a variant's reads were held to, by the link or the pacer."""
        rates = [r for r in (rate_of(variant), link if variant in URL_VARIANTS else None) if r]
        return min(rates) if rates else None

    # Variants alternate within each round, so a drift of the machine over the minutes
    # a target takes hits every variant alike instead of whichever ran last.
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in chosen}
    for _ in range(repeats):
        for variant in chosen:
            if cold:
                evict(target.files(variant))
            runs[variant].append(run_variant({
                "variant": variant, "path": str(target.path(variant)),
                "model_cfg": target.model_cfg, "bandwidth": rate_of(variant), "mmap": mmap,
                "full": full, "threads": threads, "connections": connections,
                "entry": {"bytes": student_entry.bytes, "sha256": student_entry.sha256}}))
    results = {variant: _median_run(r) for variant, r in runs.items()}
    ref = results.get("teacher_safetensors", {"first_answer_s": math.nan, "peak_bytes": 0,
                                              "full_logits": None})
    accuracy = manifest.stage_accuracies()
    # The comparison window: the time the teacher's files take at the rate of the link.
    window = manifest.teacher_bytes() / (link or rate) if (link or rate) else None
    curves = {v: [run_curve(run, accuracy, window) for run in r] for v, r in runs.items()}
    answered = {v: [run_curve(run, accuracy, window, from_answer=True) for run in r]
                for v, r in runs.items()}

    def paired(fn: Any, variant: str, base: str, key: str) -> tuple[float, float, float]:
        """``fn`` (paired_ratio, paired_difference) of ``key`` over ``base``'s, by round."""
        if base not in runs:
            return math.nan, math.nan, math.nan
        return fn([run[key] for run in runs[variant]], [run[key] for run in runs[base]])

    def areas(variant: str, of: dict[str, list[LoadCurve | None]]) -> list[float]:
        return [math.nan if c is None or c.mean_accuracy_window is None
                else c.mean_accuracy_window for c in of[variant]]

    def area_ratio(variant: str, of: dict[str, list[LoadCurve | None]]) -> float | None:
        """The URL's area over the emulated one's, paired by round."""
        if variant != "bundle_url" or not window or not any(of[variant]) or \
                not any(of.get("bundle", [])):
            return None
        return paired_ratio(areas(variant, of), areas("bundle", of))[0]

    def same_logits(variant: str, r: Mapping[str, Any]) -> bool | None:
        # An answer must not depend on how the weights were loaded: a student alone answers
        # as the bundle's first answer, every all-teacher answer as (a) (or the bundle).
        if variant in (STUDENT_ALONE, "student_url"):
            other, key = results.get("bundle", results.get("bundle_url")), "logits"
        else:
            other, key = results.get("teacher_safetensors", results.get("bundle")), "full_logits"
        if other is None or (other is r and variant != "teacher_safetensors"):
            return None  # nothing measured here to compare with
        return r[key] == other[key]

    rows = []
    for variant, r in results.items():
        ratio, low, high = paired(paired_ratio, variant, STUDENT_ALONE, "first_answer_s")
        delta, delta_low, delta_high = paired(
            paired_difference, variant, SAME_PLACE_STUDENT.get(variant, STUDENT_ALONE),
            "first_answer_s")
        variant_curves = [c for c in curves[variant] if c is not None]
        rows.append({
            "target": target.name,
            "bandwidth": bandwidth_label(rate),
            "variant": variant,
            "bytes_read": first_bytes[variant],
            "bytes_ratio": first_bytes[variant] / teacher_bytes,
            "first_answer_s": r["first_answer_s"],
            "first_answer_ratio": r["first_answer_s"] / ref["first_answer_s"],
            "student_ratio": ratio,
            "student_ratio_low": low,
            "student_ratio_high": high,
            "peak_mb": r["peak_bytes"] / 2**20,
            "peak_ratio": r["peak_bytes"] / max(ref["peak_bytes"], 1),
            "full_answer_s": r["full_answer_s"],
            "full_peak_mb": r["full_peak_bytes"] / 2**20,
            # An answer must not depend on how the weights were loaded: the student alone
            # answers as the bundle's first answer, every other all-teacher answer as (a).
            "same_logits": same_logits(variant, r),
            "bundle_ratio": paired(paired_ratio, variant, "bundle", "first_answer_s")[0],
            "bundle_full_ratio": paired(paired_ratio, variant, "bundle", "full_answer_s")[0],
            "first_requests": r.get("first_requests"),
            "first_bytes_received": r.get("first_bytes_received"),
            "student_delta_ms": 1000 * delta,
            "student_delta_ms_low": 1000 * delta_low,
            "student_delta_ms_high": 1000 * delta_high,
            "link_rate": held_rate(variant) if variant in BUNDLES else None,
            "link_use": _median_or_none([link_use(run, held_rate(variant))
                                         for run in runs[variant]]),
            "time_to_teacher_s": _median_or_none([c.time_to_teacher_s
                                                  for c in variant_curves]),
            "window_s": window if variant_curves else None,
            "mean_accuracy_window": _median_or_none([c.mean_accuracy_window
                                                     for c in variant_curves]),
            "mean_accuracy_load": _median_or_none([c.mean_accuracy_load
                                                   for c in variant_curves]),
            "area_ratio": area_ratio(variant, curves),
            "mean_accuracy_answered": _median_or_none([c.mean_accuracy_window
                                                       for c in answered[variant] if c]),
            "area_ratio_answered": area_ratio(variant, answered),
            "connections": connections if variant in BUNDLES else None,
        })
    return rows


def generation_rows(target: Target, tokens: int, repeats: int,
                    first_token_s: float | None = None) -> list[dict[str, Any]]:
    """Tokens per second of a language-model bundle at each stage of its loading order.

    The whole hybrid is loaded (every file checked) and, at each stage's mask, ``tokens``
    greedy tokens follow a random prompt of one context window, each token one forward
    over the window (as ``ProgressiveModel.generate``), ``repeats`` times after one warm-up
    token: the median rate with its 95% bootstrap interval. ``first_token_s``: the bundle's
    time from the open to its first token (its first answer), given on the student's row.
    """
    hybrid, model_cfg = load_bundle_hybrid(target.bundle)
    masks = LoadingOrder.parse(read_manifest(target.bundle).loading_order,
                               hybrid.num_blocks).masks
    window = int(model_cfg["teacher"]["context_length"])
    prompt = torch.randint(int(model_cfg["teacher"]["vocab_size"]), (window,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    rows = []
    with torch.no_grad():
        for stage, mask in enumerate(masks):
            def step(x: torch.Tensor, mask: str = mask) -> tuple[torch.Tensor, str]:
                return hybrid(x, mask), mask

            next_tokens(step, prompt, 1, window)  # warm-up
            rates = []
            for _ in range(repeats):
                began = time.perf_counter()
                next_tokens(step, prompt, tokens, window)
                rates.append(tokens / (time.perf_counter() - began))
            rate, low, high = median_interval(rates)
            rows.append({"target": target.name, "stage": stage, "mask": mask, "tokens": tokens,
                         "repeats": repeats, "tokens_per_s": rate, "tokens_per_s_low": low,
                         "tokens_per_s_high": high,
                         "first_token_s": first_token_s if stage == 0 else None})
    return rows


def generation_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="a language model's tokens per second at each stage (median, 95% "
                  "interval; one forward over the context window per token)")
    for name in ("target", "stage", "mask", "tokens x repeats", "tokens/s", "95% interval",
                 "first token"):
        table.add_column(name, justify="left" if name in ("target", "mask") else "right")
    for r in rows:
        interval = ("" if math.isnan(r["tokens_per_s_low"])
                    else f"[{r['tokens_per_s_low']:.1f}, {r['tokens_per_s_high']:.1f}]")
        table.add_row(r["target"], str(r["stage"]), r["mask"], f"{r['tokens']} x {r['repeats']}",
                      f"{r['tokens_per_s']:.1f}", interval,
                      "" if r["first_token_s"] is None else f"{r['first_token_s']:.3f} s")
    return table


def bandwidth_label(rate: float | None) -> str:
    return human_bytes(rate) + "/s" if rate else "none"


def results_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="time to first answer and peak memory; x: ratio to teacher_safetensors, "
                  "x student: to the student alone")
    for name in ("target", "bandwidth", "variant", "read", "bytes x", "first answer", "x",
                 "x student", "peak MB", "x", "all-T answer", "all-T peak MB", "same",
                 "x local (first, all-T)"):
        table.add_column(name, justify="left" if name in ("target", "variant") else "right")
    for r in rows:
        table.add_row(r["target"], r["bandwidth"], r["variant"], human_bytes(r["bytes_read"]),
                      f"{r['bytes_ratio']:.3f}", f"{r['first_answer_s']:.3f} s",
                      f"{r['first_answer_ratio']:.3f}", student_ratio_cell(r),
                      f"{r['peak_mb']:.1f}",
                      f"{r['peak_ratio']:.3f}", f"{r['full_answer_s']:.3f} s",
                      f"{r['full_peak_mb']:.1f}",
                      {True: "yes", False: "[red]NO[/red]", None: "-"}[r["same_logits"]],
                      f"{r['bundle_ratio']:.3f}, {r['bundle_full_ratio']:.3f}"
                      if r["variant"] == "bundle_url" else "")
    return table


def network_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The URL and throttled-link columns: first answer over the student alone from the
    same place, requests and bytes before it, link use, time to the teacher's accuracy and
    the accuracy-over-time area (the URL's over the emulated one's)."""
    table = Table(title="over the network: first answer - the student alone's from the same "
                  "place (ms, 95% interval), link use, accuracy over time")
    for name in ("target", "link", "conn.", "variant", "first answer", "- student alone (ms)",
                 "requests", "bytes before", "link use", "teacher acc. at", "window",
                 "mean acc. (window)", "area / emulated", "from 1st answer",
                 "area / emulated (1st)"):
        table.add_column(name, justify="left" if name in ("target", "variant") else "right")

    def cell(value: Any, fmt: str) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
            else format(value, fmt)

    for r in rows:
        delta = cell(r["student_delta_ms"], ".1f")
        if delta and not math.isnan(r["student_delta_ms_low"]):
            delta += f" [{r['student_delta_ms_low']:.1f}, {r['student_delta_ms_high']:.1f}]"
        table.add_row(r["target"], bandwidth_label(r["link_rate"]) if r["link_rate"] else "",
                      cell(r["connections"], "d"), r["variant"], f"{r['first_answer_s']:.3f} s", delta,
                      cell(r["first_requests"], "d"), cell(r["first_bytes_received"], ","),
                      cell(r["link_use"], ".3f"), cell(r["time_to_teacher_s"], ".3f"),
                      cell(r["window_s"], ".2f"), cell(r["mean_accuracy_window"], ".4f"),
                      cell(r["area_ratio"], ".4f"), cell(r["mean_accuracy_answered"], ".4f"),
                      cell(r["area_ratio_answered"], ".4f"))
    return table


def student_ratio_cell(row: Mapping[str, Any]) -> str:
    """``student_ratio`` with its 95% interval, when the rounds gave one."""
    cell = f"{row['student_ratio']:.3f}"
    if math.isnan(row["student_ratio_low"]):
        return cell
    return f"{cell} [{row['student_ratio_low']:.3f}, {row['student_ratio_high']:.3f}]"


def write_results(rows: Sequence[dict[str, Any]], out: Path, name: str = "bench",
                  columns: Sequence[str] = COLUMNS) -> None:
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{name}.json").write_text(json.dumps(list(rows), indent=2) + "\n")


def bench(cfg: DictConfig) -> list[dict[str, Any]]:
    check_app_config(cfg, "bench")
    if not cfg.bundle and not cfg.random_pair:
        raise ConfigError("nothing to measure: pass bundle=<dir> or leave random_pair=true")
    bandwidths = OmegaConf.to_container(cfg.bandwidths) if OmegaConf.is_config(
        cfg.bandwidths) else [cfg.bandwidths]
    for bw in bandwidths:
        parse_bandwidth(bw, "bandwidths")
    if cfg.repeats < 1:
        raise ConfigError(f"repeats={cfg.repeats} must be at least 1")
    link_rate = parse_bandwidth(cfg.get("link_rate"), "link_rate")
    if link_rate and any(parse_bandwidth(bw) for bw in bandwidths):
        raise ConfigError("link_rate= paces the local variants at the server's rate; leave "
                          "bandwidths=[null] with it")
    connections = int(cfg.get("connections") or 1)
    variants = cfg.get("variants")
    if variants is not None:
        variants = list(variants)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"variants: {unknown[0]!r} is unknown; pick from {list(VARIANTS)}")
    console = make_console()
    out = run_dir()
    workdir = Path(to_absolute_path(cfg.workdir)) if cfg.workdir else None
    if workdir is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"workdir={workdir} cannot be created ({e.strerror}); pass a "
                              "writable directory or workdir=null") from None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pwl-bench-", dir=workdir) as tmp:
        targets = []
        if cfg.bundle:
            bundle = cfg.bundle if is_url(cfg.bundle) else Path(to_absolute_path(cfg.bundle))
            console.print(f"writing the teacher and the student of {bundle} as whole files "
                          + ("(the bundle copied from its URL first) ..." if is_url(bundle)
                             else "..."))
            targets.append(bundle_target(bundle, Path(tmp) / "bundle-target"))
        if cfg.random_pair:
            console.print("building and writing the random-weight pair ...")
            targets.append(random_pair_target(OmegaConf.to_container(cfg.pair),
                                              Path(tmp) / "random-pair"))
        generation: list[dict[str, Any]] = []
        for target in targets:
            for bw in bandwidths:
                console.print(f"measuring {target.name} at bandwidth {bw or 'none'} ...")
                rows += measure_target(target, bw, cfg.mmap, cfg.cold, cfg.full, cfg.threads,
                                       cfg.repeats, link_rate, variants, connections)
            if target.model_cfg["teacher"].get("vocab_size") and cfg.get("gen_tokens"):
                console.print(f"generating with {target.name} at each stage ...")
                first = next((r["first_answer_s"] for r in rows if r["target"] == target.name
                              and r["variant"] == "bundle" and r["bandwidth"] == "none"), None)
                generation += generation_rows(target, int(cfg.gen_tokens),
                                              max(int(cfg.repeats), 3), first)
    write_results(rows, out)
    console.print(results_table(rows))
    if generation:
        write_results(generation, out, "generation", GENERATION_COLUMNS)
        console.print(generation_table(generation))
    if any(r["link_rate"] or r["variant"] in URL_VARIANTS for r in rows):
        console.print(network_table(rows))
    console.print(f"bench.csv and bench.json{' and generation.csv/json' if generation else ''} "
                  f"in {out}")
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    user_errors_as_one_line(bench)(cfg)


if __name__ == "__main__":
    main()
