"""Accuracy per byte of one distilled run: every mask, the loading plan, smaller shards.

    python experiments/plans.py [--experiment fmnist_resnet_narrow] [--run DIR]
                                [--runs DIR] [--results DIR] [--load-seconds 10]
                                [--dtypes fp32 fp16 int8] [--threads 2] [--force]

Steps (each skipped when its output exists, as in ``reproduce.py``):

1. ``pwl.plan``: every mask evaluated once on the validation split (the all-mask
   table, ``stages_all_val.csv`` with its bytes in ``masks.csv``), and the order of
   largest area under accuracy vs bytes next to prefix and suffix (``plan.csv``,
   ``plan.png``). The plan is chosen on validation only.
2. ``pwl.export loading_order=<plan.csv> dtype=...``: one bundle per precision, its
   stages measured on the test split with the stored weights.
3. ``experiments/curves.py``: each precision loaded in the plan's, prefix and suffix order at the
   bandwidth where the fp32 bundle takes ``--load-seconds`` to arrive, all in one run so
   the areas are comparable as ratios.

``--run`` defaults to ``runs/reproduce/<experiment>/distill_pwl/seed0`` (the run
``reproduce.py`` exports). The results directory (``<runs>/report`` unless ``--results``
names one: like a reproduction, a run never rewrites the tracked record, nor skips a step
because the record holds its output) receives the tables, plots, the exact commands with
their wall times (``plans.json``), ``provenance.json`` and ``README.md``; ``make record
RUN=runs/plans/<experiment> RECORD=experiments/results/<experiment>_plans`` records it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from provenance import invocation, write_provenance
from reproduce import ROOT, portable, step

from pwl.cli import human_bytes
from pwl.runtime import read_manifest
from pwl.stages.plans import plan_metric, read_plan_rows


def bundle_bytes(bundle: Path) -> tuple[int, int]:
    """(student file bytes, teacher files bytes) of a bundle."""
    manifest = read_manifest(bundle)
    return manifest.side_bytes(), manifest.teacher_bytes()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def plan_table(plan_csv: Path) -> list[str]:
    """Markdown: each order's blocks, its area under the plan's metric (accuracy, or bits per
    character for a language model) vs MB and the ratio to prefix."""
    rows = read_plan_rows(plan_csv)
    metric = plan_metric(rows)
    orders = list(dict.fromkeys(r.order for r in rows))
    total = max(r.bytes_loaded for r in rows)
    mean = {o: next(r for r in rows if r.order == o).mean(metric) for o in orders}
    lines = [f"| order | blocks in loading order | area ({metric.name} x MB) | mean {metric.label} "
             "over the teacher's bytes | vs prefix |", "|---|---|---|---|---|"]
    for o in orders:
        blocks = " ".join(str(r.block) for r in rows if r.order == o and r.block >= 0)
        ratio = f"{mean[o] / mean['prefix']:.4f}" if "prefix" in mean else "-"
        lines.append(f"| {o} | {blocks} | {mean[o] * total / 1e6:.4f} | {mean[o]:.4f} | "
                     f"{ratio} |")
    return lines


def stages_table(bundles: dict[str, Path]) -> list[str]:
    """Markdown: bytes and each stage's recorded metric (from each bundle's manifest) per
    precision: accuracy in percent, or bits per character for a language model."""
    manifests = {d: read_manifest(b) for d, b in bundles.items()}
    first = next(iter(manifests.values()))
    masks = [r.mask for r in first.stages]
    lines = ["| dtype | student file | teacher files | teacher vs fp32 | "
             + " | ".join(masks) + " |", "|---" * (4 + len(masks)) + "|"]
    fp32_teacher = bundle_bytes(bundles[next(iter(bundles))])[1]
    for dtype, manifest in manifests.items():
        student, teacher = bundle_bytes(bundles[dtype])
        bpc = any(r.bpc is not None for r in manifest.stages)
        value = manifest.stage_values()
        lines.append(f"| {dtype} | {human_bytes(student)} | {human_bytes(teacher)} | "
                     f"{teacher / fp32_teacher:.3f} | "
                     + " | ".join("-" if m not in value else f"{value[m]:.3f}" if bpc
                                  else f"{100 * value[m]:.2f}" for m in masks)
                     + " |")
    return lines


def curves_table(curves_csv: Path) -> list[str]:
    """Markdown: bench's accuracy-over-time rows (one per precision and order)."""
    lines = ["| dtype | order | teacher files | first answer (s) | loaded (s) | "
             "teacher's accuracy at (s) | mean accuracy over the load | mean over the fp32 "
             "teacher's load time | vs first row | worst right-to-wrong share |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in read_csv(curves_csv):
        reached = f"{float(r['time_to_teacher_s']):.2f}" if r["time_to_teacher_s"] else "never"
        lines.append(f"| {r['dtype']} | {r['order']} | {human_bytes(int(r['teacher_bytes']))} "
                     f"| {float(r['first_answer_s']):.3f} | {float(r['loaded_s']):.2f} | "
                     f"{reached} | {float(r['mean_accuracy_load']):.4f} | "
                     f"{float(r['mean_accuracy_window']):.4f} | {float(r['area_ratio']):.4f} | "
                     f"{100 * float(r['max_flip']):.2f}% |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fmnist_resnet_narrow")
    parser.add_argument("--run", type=Path, default=None,
                        help="distill run (default runs/reproduce/<experiment>/distill_pwl/seed0)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="bundles (default runs/plans/<experiment>)")
    parser.add_argument("--results", type=Path, default=None,
                        help="tables and plots (default <runs>/report)")
    parser.add_argument("--load-seconds", type=float, default=10.0,
                        help="the bandwidth is set so the fp32 bundle loads in this many seconds")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "int8"],
                        help="teacher shard precisions (the first is the reference)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each load")
    parser.add_argument("--force", action="store_true", help="redo finished steps")
    args = parser.parse_args()

    exp = args.experiment
    run = (args.run or ROOT / "runs" / "reproduce" / exp / "distill_pwl" / "seed0").absolute()
    if not (run / "hybrid.safetensors").is_file():
        sys.exit(f"--run {run} has no hybrid.safetensors; run `python experiments/reproduce.py "
                 f"--experiment {exp}` first or pass --run <distill run dir>")
    runs = (args.runs or ROOT / "runs" / "plans" / exp).resolve()
    results = (args.results or runs / "report").resolve()
    results.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    log: list[dict] = []
    ledger = runs / "steps.json"

    step("plan", [*py, "pwl.plan", f"checkpoint={run}", f"out={results}"],
         results / "plan.csv", log, args.force, ledger)
    bundles = {}
    for dtype in args.dtypes:
        bundles[dtype] = runs / f"bundle_{dtype}"
        step(f"export {dtype}", [*py, "pwl.export", f"checkpoint={run}", f"out={bundles[dtype]}",
                                 f"loading_order={results / 'plan.csv'}", f"dtype={dtype}",
                                 "stages_split=test"],
             bundles[dtype] / "manifest.json", log, args.force, ledger)
    reference = bundles[args.dtypes[0]]
    rate = round(sum(bundle_bytes(reference)) / args.load_seconds)
    step("curves", [sys.executable, str(ROOT / "experiments" / "curves.py"),
                    f"--bundle={reference}", f"--bandwidth={rate}", f"--threads={args.threads}",
                    "--orders", "plan", "prefix", "suffix", "--dtypes", *args.dtypes,
                    f"--out={results / 'bench'}"],
         results / "bench" / "curves.csv", log, args.force, ledger)

    summary = {"experiment": exp, "run": portable([str(run)]), "bandwidth_bytes_per_s": rate,
               "load_seconds": args.load_seconds, "steps": log}
    (results / "plans.json").write_text(json.dumps(summary, indent=2))
    metric = plan_metric(read_plan_rows(results / "plan.csv"))
    values = ("bits per character" if metric.name == "bpc" else "accuracy")
    lines = [f"# `{exp}`: {values} per byte", "",
             f"Run: `{summary['run']}` (`loss=pwl`, seed 0). The plan is chosen on the "
             f"validation split; every value below it is on the test split.", "",
             "## Loading orders (validation split, fp32 block bytes)", "",
             *plan_table(results / "plan.csv"), "",
             f"All masks: `stages_all_val.csv` ({values}) and `masks_all_val.csv` (bytes per "
             "mask at each precision).", "", "![plan](plan.png)", "",
             f"## Bundles by precision (test split, {values}; loading order: the plan)", "",
             *stages_table(bundles), "",
             f"## Accuracy over time at {human_bytes(rate)}/s (the fp32 bundle loads in about "
             f"{args.load_seconds:g} s)", "",
             *([] if metric.name != "bpc" else [
                 "The loading bench follows each stage's recorded next-character accuracy "
                 "(the bundle's records hold both metrics).", ""]),
             *curves_table(results / "bench" / "curves.csv"), "",
             f"Plot: `bench/curves.png`. {args.threads} torch threads per load, cold page "
             "cache, one process per load.", "",
             "## Commands", "", "| step | minutes | command |", "|---|---|---|"]
    for s in log:
        minutes = "" if s["seconds"] is None else f"{s['seconds'] / 60:.1f}"
        lines.append(f"| {s['step']} | {minutes} | `{s['command']}` |")
    (results / "README.md").write_text("\n".join(lines) + "\n")
    write_provenance(results, invocation(), log)
    print(f"report in {results}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{(time.perf_counter() - start) / 60:.1f} min")
