"""End-to-end reproduction of one experiment, with the wall time of every step.

    python experiments/reproduce.py [--experiment fmnist_resnet_narrow] [--runs DIR]
                                    [--results DIR] [--force] [-- extra Hydra overrides]

Steps: teacher -> distill (loss=pwl) -> distill baseline (loss=kd, same budget)
-> stage evaluation of both on the test split -> bundle export -> report.
A step whose outputs exist is skipped (use --force to redo), so an interrupted
run continues where it stopped. The results directory receives the report,
``reproduce.json`` (commands, wall times, checks) and ``README.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from report import report  # noqa: E402


def step(name: str, cmd: list[str], done: Path, log: list[dict], force: bool) -> None:
    shown = " ".join(shlex.quote(c) for c in cmd)
    if done.exists() and not force:
        print(f"[{name}] done before ({done}); skipping", flush=True)
        log.append({"step": name, "command": shown, "seconds": None, "skipped": True})
        return
    print(f"[{name}] {shown}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT)
    seconds = time.perf_counter() - start
    log.append({"step": name, "command": shown, "seconds": round(seconds, 1), "skipped": False})
    if result.returncode != 0:
        sys.exit(f"[{name}] failed with exit code {result.returncode}; fix it and run again "
                 "(finished steps are kept)")
    print(f"[{name}] {seconds / 60:.1f} min", flush=True)


def read_stages(path: Path) -> dict[tuple[str, str], float]:
    with path.open() as f:
        return {(r["order"], r["mask"]): float(r["accuracy"]) for r in csv.DictReader(f)}


def checks(pwl: dict, kd: dict, n: int) -> list[dict]:
    """The quality bars of the default experiment, measured on the test split."""
    prefix = [pwl[("prefix", "T" * k + "S" * (n - k))] for k in range(n + 1)]
    drops = [prefix[k] - prefix[k + 1] for k in range(n)]
    teacher, student = prefix[-1], prefix[0]
    kd_student = kd[("prefix", "S" * n)]
    return [
        {"check": "teacher >= 92%", "value": teacher, "ok": teacher >= 0.92},
        {"check": "teacher - student >= 2 points", "value": teacher - student,
         "ok": teacher - student >= 0.02},
        {"check": "PWL student within 1 point of the KD baseline",
         "value": student - kd_student, "ok": abs(student - kd_student) <= 0.01},
        {"check": "prefix curve: no drop > 0.5 points from k to k+1", "value": max(drops),
         "ok": max(drops) <= 0.005},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fmnist_resnet_narrow")
    parser.add_argument("--runs", type=Path, default=None,
                        help="run directories (default runs/reproduce/<experiment>)")
    parser.add_argument("--results", type=Path, default=None,
                        help="tables and plots (default experiments/results/<experiment>)")
    parser.add_argument("--force", action="store_true", help="redo finished steps")
    parser.add_argument("--only", choices=("teacher",), default=None,
                        help="stop after this step (e.g. to share a teacher with a sweep)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every stage")
    args = parser.parse_args()

    exp = args.experiment
    runs = (args.runs or ROOT / "runs" / "reproduce" / exp).resolve()
    results = (args.results or ROOT / "experiments" / "results" / exp).resolve()
    py = [sys.executable, "-m"]
    common = [f"experiment={exp}", "logger=csv", *args.overrides]
    log: list[dict] = []
    start = time.perf_counter()

    teacher, pwl_run, kd_run = runs / "teacher", runs / "distill_pwl", runs / "distill_kd"
    step("teacher", [*py, "pwl.train", "stage=teacher", *common, f"hydra.run.dir={teacher}"],
         teacher / "teacher.safetensors", log, args.force)
    if args.only == "teacher":
        return
    for run, loss in ((pwl_run, "pwl"), (kd_run, "kd")):
        step(f"distill {loss}", [*py, "pwl.train", "stage=distill", f"loss={loss}",
                                 f"teacher={teacher}", *common, f"hydra.run.dir={run}"],
             run / "hybrid.safetensors", log, args.force)
    for run in (pwl_run, kd_run):
        step(f"evaluate {run.name}", [*py, "pwl.evaluate", f"checkpoint={run}",
                                      "orders=[prefix,suffix,window]",
                                      f"hydra.run.dir={run / 'eval'}"],
             run / "eval" / "stages.csv", log, args.force)
    bundle = runs / "bundle"
    step("export", [*py, "pwl.export", f"checkpoint={pwl_run}", f"out={bundle}",
                    f"hydra.run.dir={runs / 'export'}"],
         bundle / "manifest.json", log, args.force)

    report([pwl_run / "eval", kd_run / "eval"], results, split="test")
    pwl_stages = read_stages(pwl_run / "eval" / "stages.csv")
    kd_stages = read_stages(kd_run / "eval" / "stages.csv")
    n = len(next(iter(pwl_stages))[1])
    # The quality bars are set for the Fashion-MNIST experiments.
    results_checks = checks(pwl_stages, kd_stages, n) if exp.startswith("fmnist") else []
    total = time.perf_counter() - start
    summary = {
        "experiment": exp, "overrides": args.overrides, "runs": str(runs),
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__},
        "steps": log, "wall_seconds": round(total, 1), "checks": results_checks,
    }
    (results / "reproduce.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwall time {total / 60:.1f} min; runs in {runs}; report in {results}")
    for c in results_checks:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['value']:.4f}")


if __name__ == "__main__":
    main()
