"""End-to-end reproduction of one experiment, with the wall time of every step.

    python experiments/reproduce.py [--experiment fmnist_resnet_narrow] [--runs DIR]
                                    [--results DIR] [--force] [-- extra Hydra overrides]

Steps: teacher -> distill (``--loss``, default pwl) -> distill baseline (loss=kd, same
budget) -> stage evaluation of both on the test split -> bundle export -> report.
A step whose outputs exist is skipped (use --force to redo), so an interrupted
run continues where it stopped. The results directory receives the report,
``reproduce.json`` (commands, wall times, checks) and ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from pwl.report import report
from pwl.stages import read_stages

ROOT = Path(__file__).resolve().parents[1]


def portable(cmd: list[str]) -> str:
    """The command as a user would type it in their clone (activated venv, relative paths)."""
    root = f"{ROOT}/"
    words = ["python" if c == sys.executable else c.replace(root, "") for c in cmd]
    return " ".join(shlex.quote(w) for w in words)


def step(name: str, cmd: list[str], done: Path, log: list[dict], force: bool,
         earlier: dict[str, float]) -> None:
    """Runs one step unless its output exists; a skipped step keeps its earlier wall time."""
    shown = portable(cmd)
    if done.exists() and not force:
        print(f"[{name}] done before ({done}); skipping", flush=True)
        log.append({"step": name, "command": shown, "seconds": earlier.get(name),
                    "skipped": True})
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


def accuracies(path: Path) -> dict[tuple[str, str], float]:
    """Accuracy by (order, mask) of an evaluation's stages CSV."""
    return {(r.order, r.mask): r.accuracy for r in read_stages(path)}


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


def write_readme(results: Path, summary: dict) -> None:
    """results/README.md: how the numbers were made, then the report itself."""
    lines = [f"# `{summary['experiment']}`: make reproduce", "",
             f"Machine: {summary['machine']['platform']}, {summary['machine']['cpus']} CPU "
             f"threads, CUDA {'yes' if summary['machine']['cuda'] else 'no'}, torch "
             f"{summary['machine']['torch']}.", "",
             "| step | minutes | command |", "|---|---|---|"]
    for s in summary["steps"]:
        minutes = "" if s["seconds"] is None else f"{s['seconds'] / 60:.1f}"
        lines.append(f"| {s['step']} | {minutes} | `{s['command']}` |")
    lines += [f"| **total** | **{summary['wall_seconds'] / 60:.1f}** | |", ""]
    if summary["checks"]:
        lines += ["| check | value | result |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']:.4f} | {'ok' if c['ok'] else 'FAIL'} |"
                  for c in summary["checks"]]
        lines.append("")
    body = (results / "report.md").read_text().split("\n", 1)[1]
    lines += ["## Test-split accuracy", body,
              "![accuracy vs k](accuracy_vs_k.png)", "",
              "![accuracy vs MB](accuracy_vs_mb.png)", ""]
    (results / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fmnist_resnet_narrow")
    parser.add_argument("--runs", type=Path, default=None,
                        help="run directories (default runs/reproduce/<experiment>)")
    parser.add_argument("--results", type=Path, default=None,
                        help="tables and plots (default experiments/results/<experiment>)")
    parser.add_argument("--force", action="store_true", help="redo finished steps")
    parser.add_argument("--loss", default="pwl",
                        help="the PWL loss preset (pwl: one random mixed path per step; "
                             "pwl_all: every prefix path per step; see "
                             "experiments/results/fmnist_resnet_narrow_choices)")
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
    previous = results / "reproduce.json"
    earlier = {s["step"]: s["seconds"] for s in json.loads(previous.read_text())["steps"]
               } if previous.is_file() and not args.force else {}

    teacher, pwl_run = runs / "teacher", runs / f"distill_{args.loss}"
    kd_run = runs / "distill_kd"
    step("teacher", [*py, "pwl.train", "stage=teacher", *common, f"hydra.run.dir={teacher}"],
         teacher / "teacher.safetensors", log, args.force, earlier)
    if args.only == "teacher":
        return
    for run, loss in ((pwl_run, args.loss), (kd_run, "kd")):
        step(f"distill {loss}", [*py, "pwl.train", "stage=distill", f"loss={loss}",
                                 f"teacher={teacher}", *common, f"hydra.run.dir={run}"],
             run / "hybrid.safetensors", log, args.force, earlier)
    for run in (pwl_run, kd_run):
        step(f"evaluate {run.name}", [*py, "pwl.evaluate", f"checkpoint={run}",
                                      "orders=[prefix,suffix,window]",
                                      f"hydra.run.dir={run / 'eval'}"],
             run / "eval" / "stages.csv", log, args.force, earlier)
    bundle = runs / "bundle"
    step("export", [*py, "pwl.export", f"checkpoint={pwl_run}", f"out={bundle}",
                    f"hydra.run.dir={runs / 'export'}"],
         bundle / "manifest.json", log, args.force, earlier)

    start = time.perf_counter()
    report([pwl_run / "eval", kd_run / "eval"], results, split="test")
    pwl_stages = accuracies(pwl_run / "eval" / "stages.csv")
    kd_stages = accuracies(kd_run / "eval" / "stages.csv")
    n = len(next(iter(pwl_stages))[1])
    # The quality bars are set for the Fashion-MNIST experiments.
    results_checks = checks(pwl_stages, kd_stages, n) if exp.startswith("fmnist") else []
    shown = portable([sys.executable, "-m", "pwl.report", str(pwl_run / "eval"),
                      str(kd_run / "eval"), "--out", str(results)])
    log.append({"step": "report", "command": shown,
                "seconds": round(time.perf_counter() - start, 1), "skipped": False})
    total = sum(s["seconds"] or 0 for s in log)
    summary = {
        "experiment": exp, "overrides": args.overrides, "runs": str(runs),
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__},
        "steps": log, "wall_seconds": round(total, 1), "checks": results_checks,
    }
    (results / "reproduce.json").write_text(json.dumps(summary, indent=2))
    write_readme(results, summary)
    print(f"\nwall time {total / 60:.1f} min (sum of the steps); runs in {runs}; "
          f"report in {results}")
    for c in results_checks:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['value']:.4f}")


if __name__ == "__main__":
    main()
