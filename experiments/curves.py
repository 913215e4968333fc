"""Accuracy over time of one bundle: its teacher stored at each dtype, loaded in each order.

    python experiments/curves.py --bundle <fp32 bundle> [--bandwidth 20MB]
        [--dtypes fp32 int8] [--orders bundle prefix plan] [--split test] [--threads 2]
        [--out DIR]

The bundle's teacher is written at each of ``--dtypes`` into ``--out`` (stage
accuracies of every mask of ``--orders`` measured with the stored weights on
``--split``), and loaded in each order at ``--bandwidth``, each load in a fresh
process (``pwl.bench_worker``). Per load: time to first answer, time to the
teacher's accuracy, the mean accuracy over the load and over a fixed window (the
time the fp32 teacher alone takes to answer at that rate, measured in the same
run), its ratio to the first row, and the share of inputs each swap turns from
right to wrong (``pwl.stages.curves``). All loads share one machine and one run,
so their ratios compare. Writes ``curves.csv``, ``curves.json`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pwl.bench import (
    bandwidth_label,
    bundle_target,
    evict,
    measure_target,
    run_variant,
    write_results,
)
from pwl.config import parse_bandwidth
from pwl.errors import PWLError
from pwl.export import measure_stage_records
from pwl.masks import LoadingOrder
from pwl.runtime import Manifest, load_bundle_hybrid, read_manifest, write_bundle
from pwl.stages.curves import LoadCurve, consecutive_pairs, load_curve
from pwl.stages.measure import evaluate_on_split

COLUMNS = ("bandwidth", "dtype", "order", "teacher_bytes", "first_answer_s", "loaded_s",
           "time_to_teacher_s", "mean_accuracy_load", "window_s", "mean_accuracy_window",
           "area_ratio", "max_flip", "flips")


@dataclass(frozen=True)
class Variant:
    """The bundle's teacher stored at one dtype: its bundle, stage accuracies and flips."""

    dtype: str
    bundle: Path
    accuracy: dict[str, float]
    teacher_bytes: int
    flips: dict[tuple[str, str], float]


def plot_load_curves(curves: Mapping[str, LoadCurve], path: str | Path, title: str = "",
                     ) -> Path:
    """Accuracy vs seconds since open, one step line per load; the fixed window dashed."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display

    path = Path(path)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    end = max((max(c.loaded_s, c.window_s or 0.0) for c in curves.values()), default=1.0)
    for name, curve in curves.items():
        t = [0.0, *(s[0] for s in curve.stages), end]
        acc = [0.0, *(s[2] for s in curve.stages), curve.stages[-1][2]]
        label = f"{name} (mean {curve.mean_accuracy_load:.4f} over its load"
        if curve.mean_accuracy_window is not None:
            label += f", {curve.mean_accuracy_window:.4f} over the window"
        ax.step(t, acc, where="post", label=label + ")")
    windows = {c.window_s for c in curves.values() if c.window_s is not None}
    for w in windows:
        ax.axvline(w, color="gray", ls="--", lw=1)
    ax.set_xlabel("seconds since open")
    ax.set_ylabel("accuracy (manifest)")
    ax.set_title(title or "accuracy while loading (dashed: the fp32 teacher's load time)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=120)
    return path


def orders_of(manifest: Manifest, names: Sequence[str]) -> dict[str, list[str]]:
    """Masks per order name (``bundle``: its loading order, ``plan``: its plan, left out when
    it has none, ``prefix``, ``suffix``); orders with the same masks are joined by ``=``."""
    orders: dict[str, list[str]] = {}
    for name in names:
        if name == "plan" and not manifest.plan:
            continue
        masks = list(LoadingOrder.parse({"bundle": manifest.loading_order,
                                         "plan": manifest.plan}.get(name, name),
                                        manifest.num_blocks).masks)
        same = next((k for k, v in orders.items() if v == masks), None)
        if same is None:
            orders[name] = masks
        else:
            orders[f"{same}={name}"] = orders.pop(same)
    return orders


def variants(bundle: Path, dtypes: Sequence[str], orders: Mapping[str, list[str]], split: str,
             workdir: Path) -> list[Variant]:
    manifest = read_manifest(bundle)
    if manifest.teacher_dtype != "fp32" or manifest.data is None:
        raise PWLError(f"{bundle}: give an fp32 bundle with a data config (export it with "
                       "data=auto)")
    hybrid, model_cfg = load_bundle_hybrid(bundle)
    masks = list(dict.fromkeys(m for order in orders.values() for m in order))
    pairs = list(dict.fromkeys(p for order in orders.values() for p in consecutive_pairs(order)))
    out = []
    for dtype in dtypes:
        stages = measure_stage_records(hybrid, dtype, masks, manifest.data,
                                       bundle / "manifest.json", split)
        written = write_bundle(hybrid, model_cfg, workdir / f"curves-{dtype}", dtype=dtype,
                               loading_order=manifest.loading_order, stages=stages,
                               data_cfg=manifest.data, plan=manifest.plan)
        flips = evaluate_on_split(load_bundle_hybrid(workdir / f"curves-{dtype}")[0],
                                  manifest.data, split, masks, flip_pairs=pairs,
                                  saved_from=bundle / "manifest.json")
        out.append(Variant(dtype, workdir / f"curves-{dtype}", written.stage_accuracies(),
                           written.teacher_bytes(), {p: flips.flip_rate(*p) for p in pairs}))
    return out


def measure(model_cfg: Mapping[str, Any], found: Sequence[Variant],
            orders: Mapping[str, list[str]], window_s: float, rate: float | None,
            threads: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows, curves = [], {}
    for variant in found:
        for name, masks in orders.items():
            evict(p for p in variant.bundle.rglob("*") if p.is_file())
            r = run_variant({"variant": "bundle", "path": str(variant.bundle),
                             "model_cfg": dict(model_cfg), "bandwidth": rate, "mmap": False,
                             "full": True, "threads": threads, "order": list(masks)})
            curve = load_curve([(t, m) for t, m in r["events"]], variant.accuracy,
                               r["first_answer_s"], window_s)
            flips = [variant.flips[p] for p in consecutive_pairs(masks)]
            curves[f"{variant.dtype} {name}"] = curve
            rows.append({"bandwidth": bandwidth_label(rate), "dtype": variant.dtype,
                         "order": name, "teacher_bytes": variant.teacher_bytes,
                         "first_answer_s": curve.first_answer_s, "loaded_s": curve.loaded_s,
                         "time_to_teacher_s": curve.time_to_teacher_s,
                         "mean_accuracy_load": curve.mean_accuracy_load, "window_s": window_s,
                         "mean_accuracy_window": curve.mean_accuracy_window,
                         "max_flip": max(flips, default=0.0),
                         "flips": " ".join(f"{f:.4f}" for f in flips)})
    for row in rows:
        row["area_ratio"] = row["mean_accuracy_window"] / rows[0]["mean_accuracy_window"]
    return rows, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="an fp32 bundle")
    parser.add_argument("--bandwidth", default=None, help="read rate (bytes/s, 20MB); none")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--orders", nargs="+", default=["bundle", "prefix", "plan"],
                        choices=["bundle", "prefix", "suffix", "plan"])
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("curves"))
    args = parser.parse_args()
    try:
        rate = parse_bandwidth(args.bandwidth)
        args.out.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(args.bundle)
        orders = orders_of(manifest, args.orders)
        found = variants(args.bundle, args.dtypes, orders, args.split, args.out)
        target = bundle_target(args.bundle, args.out / "whole")
        # The fixed window: the time the fp32 teacher alone takes to answer at this rate.
        window = measure_target(target, rate, threads=args.threads)[0]["first_answer_s"]
        rows, curves = measure(target.model_cfg, found, orders, window, rate, args.threads)
    except PWLError as e:
        sys.exit(f"error: {e}")
    write_results(rows, args.out, "curves", COLUMNS)
    plot_load_curves(curves, args.out / "curves.png", f"{args.bundle.name} at "
                     f"{bandwidth_label(rate)}")
    print(f"curves.csv, curves.json and curves.png in {args.out}")


if __name__ == "__main__":
    main()
