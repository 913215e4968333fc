"""End-to-end reproduction of one experiment over seeds, with the wall time of every step.

    python experiments/reproduce.py [--experiment fmnist_resnet_narrow] [--seeds 0 1 2]
                                    [--losses pwl paper kd] [--runs DIR] [--results DIR]
                                    [--force] [-- extra Hydra overrides]

Steps: one teacher -> for every seed, a distillation per loss preset (``--losses``,
default pwl and the kd baseline, same budget) -> stage evaluation of each on the
validation split (for the checks) and on the test split (for the final table)
-> bundle export (first loss, first seed) -> report (mean, std and 95% interval
over seeds; paired differences against kd). A step whose outputs exist is
skipped (use --force to redo), so an interrupted run continues where it stopped.
Training runs in a process of its own; the evaluations and the export run in this
one (the recorded command line does the same from a shell), so each costs its work
and not another start of torch, Lightning and Hydra.

Model selection uses the validation split only: checkpoints are chosen on it,
and the quality checks (the experiment config's ``checks``) are read on it. The
test split is read once per run, by the final evaluation. The results directory
(``<runs>/report`` unless ``--results`` names one: a reproduction never rewrites the
tracked record by itself) receives the report, ``reproduce.json`` (commands, wall
times, checks), ``provenance.json`` and ``README.md``; the run ends with its numbers
beside the recorded ones (``--record``, default ``experiments/results/<experiment>``)
and a one-line verdict. ``make record`` writes a run into the record.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from provenance import LOAD_KEYS, invocation, training_precision, write_provenance

from pwl.atomic import atomic_write_text
from pwl.cli import CONF_DIR, user_errors_as_one_line
from pwl.masks import masks_for_order
from pwl.report import report
from pwl.stages import read_stages
from pwl.stages.files import metric_of_rows
from pwl.stages.metrics import ACCURACY, StageMetric, metric_named

ROOT = Path(__file__).resolve().parents[1]
# Entry points a step may run in this process: module -> (its config, its function of the
# config). Imported by the first step that runs one, so that step's time includes the import.
IN_PROCESS: dict[str, tuple[str, str]] = {
    "pwl.evaluate": ("evaluate", "evaluate"),
    "pwl.export": ("export", "export"),
}


def portable(cmd: list[str]) -> str:
    """The command as a user would type it in their clone (activated venv, relative paths)."""
    root = f"{ROOT}/"
    words = ["python" if c == sys.executable else c.replace(root, "") for c in cmd]
    return " ".join(shlex.quote(w) for w in words)


def read_ledger(ledger: Path) -> dict[str, dict]:
    """``{"seconds", "command"}`` by step name of the steps that finished in ``ledger``'s runs
    directory, as the invocation that ran each measured it (older ledgers kept seconds only)."""
    entries = json.loads(ledger.read_text()) if ledger.is_file() else {}
    return {name: e if isinstance(e, dict) else {"seconds": e, "command": None}
            for name, e in entries.items()}


def run_in_process(cmd: list[str]) -> int:
    """Runs ``python -m <module> <overrides>`` (a module of ``IN_PROCESS``) in this process.

    The overrides compose the module's config as its command line would. With
    ``hydra.run.dir=D`` the run directory gets what Hydra writes there (``.hydra/config.yaml``
    and ``overrides.yaml``, unless the config sets ``hydra.output_subdir`` to null; the
    report reads them to name the runs) and an unset ``out`` becomes ``D``, where the module
    then writes its files, as from the command line. A user error is printed on one line and
    gives exit code 2, as from the command line.
    """
    module, overrides = cmd[2], cmd[3:]
    config, name = IN_PROCESS[module]
    task = [o for o in overrides if not o.startswith("hydra.")]
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]

    @user_errors_as_one_line
    def run() -> None:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config, overrides, return_hydra_config=True)
        subdir = cfg.hydra.output_subdir
        with open_dict(cfg):
            del cfg["hydra"]
        if given and subdir is not None:
            saved = Path(given[0]) / subdir
            saved.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved / "config.yaml", OmegaConf.to_yaml(cfg))
            atomic_write_text(saved / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(task)))
        if given and "out" in cfg and cfg.out is None:
            cfg.out = given[0]
        getattr(importlib.import_module(module), name)(cfg)

    try:
        run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def machine_load() -> dict:
    """What a step's time depends on besides its work: the torch threads its process has and
    the machine's load averages (1, 5 and 15 minutes) when it ends, so a step that shared the
    cores with another says so in the record."""
    return {"threads": torch.get_num_threads(),
            "load": [round(v, 2) for v in os.getloadavg()]}


def step(name: str, cmd: list[str], done: Path, log: list[dict], force: bool,
         ledger: Path | None = None, in_process: bool = False) -> None:
    """Runs one step unless its output exists.

    A finished step's time and command go to ``ledger`` (``steps.json`` in the runs
    directory) at once, so an invocation that is stopped before its report still hands
    them to the one that resumes it. A skipped step is logged with what the ledger
    recorded when it ran (the command that ran, not today's; null where nothing was
    recorded). ``in_process``: ``cmd`` is ``python -m <module of IN_PROCESS> ...``, run
    here by ``run_in_process``.
    """
    shown = portable(cmd)
    if done.exists() and not force:
        print(f"[{name}] done before ({done}); skipping", flush=True)
        entry = (read_ledger(ledger) if ledger else {}).get(name, {})
        log.append({"step": name, "command": entry.get("command"),
                    "seconds": entry.get("seconds"),
                    **{k: entry[k] for k in LOAD_KEYS if k in entry},
                    "skipped": True})
        return
    print(f"[{name}] {shown}", flush=True)
    start = time.perf_counter()
    code = run_in_process(cmd) if in_process else subprocess.run(cmd, cwd=ROOT).returncode
    seconds = time.perf_counter() - start
    measured = {"seconds": round(seconds, 1), "command": shown, **machine_load()}
    log.append({"step": name, **measured, "skipped": False})
    if code != 0:
        sys.exit(f"[{name}] failed with exit code {code}; fix it and run again "
                 "(finished steps are kept)")
    if ledger is not None:
        atomic_write_text(ledger, json.dumps({**read_ledger(ledger), name: measured}, indent=2))
    print(f"[{name}] {seconds / 60:.1f} min", flush=True)


def accuracies(path: Path) -> dict[tuple[str, str], float]:
    """The stage metric (accuracy; bits per character for a language model) by (order, mask)
    of an evaluation's stages CSV."""
    rows = read_stages(path)
    metric = metric_of_rows(rows)
    return {(r.order, r.mask): r.value(metric) for r in rows}


def mean_accuracies(paths: Sequence[Path]) -> dict[tuple[str, str], float]:
    """Accuracy by (order, mask), averaged over the evaluations of several seeds."""
    tables = [accuracies(p) for p in paths]
    return {key: sum(t[key] for t in tables) / len(tables) for key in tables[0]}


def experiment_checks(experiment: str, overrides: Sequence[str]) -> dict[str, float]:
    """The ``checks`` of the composed experiment config (empty when it sets none)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])
    checks = cfg.get("checks")
    return dict(OmegaConf.to_container(checks, resolve=True)) if checks else {}


def checks(pwl: Mapping[tuple[str, str], float], kd: Mapping[tuple[str, str], float] | None,
           n: int, bars: Mapping[str, float]) -> list[dict]:
    """The quality bars of an experiment (``bars``, from its config) against measured curves.

    Args:
        pwl: accuracy by (order, mask) of the PWL distillation (mean over seeds).
        kd: the same for the KD baseline, or None without one.
        n: N, the number of blocks.
        bars: ``teacher_min``, ``gap_min``, ``student_vs_kd_max``, ``prefix_drop_max``
            (any subset), as fractions of 1.
    """
    prefix = [pwl[("prefix", mask)] for mask in masks_for_order("prefix", n)]
    drops = [prefix[k] - prefix[k + 1] for k in range(n)]
    teacher, student = prefix[-1], prefix[0]
    out = []
    if "teacher_min" in bars:
        out.append({"check": f"teacher >= {100 * bars['teacher_min']:g}%", "value": teacher,
                    "ok": teacher >= bars["teacher_min"]})
    if "gap_min" in bars:
        out.append({"check": f"teacher - student >= {100 * bars['gap_min']:g} points",
                    "value": teacher - student, "ok": teacher - student >= bars["gap_min"]})
    if "student_vs_kd_max" in bars and kd is not None:
        diff = student - kd[("prefix", "S" * n)]
        out.append({"check": f"PWL student within {100 * bars['student_vs_kd_max']:g} point "
                             "of the KD baseline",
                    "value": diff, "ok": abs(diff) <= bars["student_vs_kd_max"]})
    # A language model's bars, in bits per character (lower is better).
    if "bpc_gap_min" in bars:
        out.append({"check": f"student - teacher >= {bars['bpc_gap_min']:g} bpc",
                    "value": student - teacher, "ok": student - teacher >= bars["bpc_gap_min"]})
    if "prefix_tolerance_bpc" in bars:
        outside = max(max(p - student, teacher - p) for p in prefix[1:-1])
        out.append({"check": "prefix stages between teacher and student within "
                             f"{bars['prefix_tolerance_bpc']:g} bpc",
                    "value": outside, "ok": outside <= bars["prefix_tolerance_bpc"]})
    if "kd_mixed_gap_min_bpc" in bars and kd is not None:
        mixed = masks_for_order("prefix", n)[1:-1]
        gap = sum(kd[("prefix", m)] - pwl[("prefix", m)] for m in mixed) / len(mixed)
        out.append({"check": "KD baseline's mixed prefix stages >= "
                             f"{bars['kd_mixed_gap_min_bpc']:g} bpc worse than PWL's",
                    "value": gap, "ok": gap >= bars["kd_mixed_gap_min_bpc"]})
    if "prefix_drop_max" in bars:
        out.append({"check": f"prefix curve: no drop > {100 * bars['prefix_drop_max']:g} "
                             "points from k to k+1",
                    "value": max(drops), "ok": max(drops) <= bars["prefix_drop_max"]})
    return out


def read_summary(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["column"], r["order"], r["stage"]): r for r in csv.DictReader(f)}


def compare_with_record(summary: Path, recorded: Path, metric: StageMetric = ACCURACY) -> str:
    """This run's test values of ``metric`` beside the recorded ones, and a one-line verdict.

    A value agrees with the record when it lies inside the recorded 95% interval over
    seeds, or, where the record has one seed, within 1 point of accuracy (0.02 bits per
    character) of it. Accuracy is shown in percent, bits per character as they are.
    """
    scale, tolerance, digits = (100, 0.01, 2) if metric.name == "accuracy" else (1, 0.02, 3)
    mine, theirs = read_summary(summary), read_summary(recorded)
    shown = recorded.relative_to(ROOT) if recorded.is_relative_to(ROOT) else recorded
    lines = ["", f"this run against the record ({shown}), {metric.label}:",
             f"  {'column':<26} {'stage':<10} {'this run':>9} {'recorded [95% interval]':>30}"]
    outside = compared = 0
    for key, row in mine.items():
        if key not in theirs:
            continue
        ref, value = theirs[key], float(row["mean"])
        low, high = float(ref["ci95_low"]), float(ref["ci95_high"])
        if low != low:  # NaN: one recorded seed
            low, high = float(ref["mean"]) - tolerance, float(ref["mean"]) + tolerance
        inside = low <= value <= high
        compared += 1
        outside += not inside
        lines.append(f"  {key[0]:<26} {key[2]:<10} {scale * value:9.{digits}f} "
                     f"{scale * float(ref['mean']):9.{digits}f} "
                     f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
                     f"{'' if inside else '  <- outside'}")
    verdict = ("no stage in common with the record" if not compared else
               f"verdict: all {compared} stages agree with the record" if not outside else
               f"verdict: {outside} of {compared} stages fall outside the record")
    return "\n".join([*lines, verdict])


def prefix_points(run: Path) -> tuple[list[tuple[int, float]], int]:
    """(bytes arrived, test accuracy) along the prefix order of a distill run: the student's
    and adapters' files, then each teacher block; and the bytes of everything."""
    from pwl.checkpoint import load_hybrid
    from pwl.stages.costs import student_bytes

    first = student_bytes(load_hybrid(run)[0])
    rows = [r for r in read_stages(run / "eval_test" / "stages.csv") if r.order == "prefix"]
    points = [(first + r.bytes_loaded, r.accuracy) for r in sorted(rows, key=lambda r: r.k)]
    return points, points[-1][0]


def exit_points(run: Path) -> list[tuple[int, float]]:
    with (run / "exits_test.csv").open(newline="") as f:
        return [(int(r["bytes_loaded"]), float(r["accuracy"])) for r in csv.DictReader(f)]


def per_byte(subject_runs: Sequence[Path], exit_runs: Sequence[Path], subject: str,
             results: Path) -> None:
    """Mean accuracy over the bytes that arrive (0 to student + adapters + teacher) of the
    subject's prefix curve and of the teacher's early exits, per seed, with the paired
    difference and its 95% t-interval: ``per_byte.csv``, ``per_byte.md``, ``per_byte.png``."""
    import numpy as np
    from matplotlib.figure import Figure
    from scipy import stats

    from pwl.lit.early_exit import area_per_byte

    rows, curves = [], []
    for run, exits in zip(subject_runs, exit_runs):
        points, total = prefix_points(run)
        early = exit_points(exits)
        rows.append({"seed": run.name, f"{subject}_area": area_per_byte(points, total),
                     "early_exit_area": area_per_byte(early, total), "total_bytes": total})
        curves.append((points, early))
    diff = np.array([r[f"{subject}_area"] - r["early_exit_area"] for r in rows])
    if len(diff) > 1:
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        interval = f"[{100 * (diff.mean() - half):+.2f}, {100 * (diff.mean() + half):+.2f}]"
    else:
        interval = "(one seed: no interval)"
    with (results / "per_byte.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| seed | " + f"`{subject}` prefix | teacher early exit |", "|---|---|---|",
             *[f"| {r['seed']} | {100 * r[f'{subject}_area']:.2f} | "
               f"{100 * r['early_exit_area']:.2f} |" for r in rows],
             "", f"Mean accuracy (%) over the bytes that arrive; {subject} minus early exit, "
             f"paired by seed: {100 * diff.mean():+.2f} points {interval}."]
    (results / "per_byte.md").write_text("\n".join(lines) + "\n")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, (points, early) in enumerate(curves):
        for pts, label, color in ((points, f"{subject}: student, then teacher blocks", "C0"),
                                  (early, "teacher blocks + exit head", "C1")):
            xs = [b / 2**20 for b, _ in pts]
            ax.step(xs, [a for _, a in pts], where="post", color=color, alpha=0.7,
                    label=label if i == 0 else None)
    ax.set_xlabel("MB arrived")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(results / "per_byte.png", dpi=120)
    print("\n".join(lines))


def write_readme(results: Path, summary: dict) -> None:
    """results/README.md: how the numbers were made, then the report itself."""
    lines = [f"# `{summary['experiment']}`: make reproduce", "",
             f"Machine: {summary['machine']['platform']}, {summary['machine']['cpus']} CPU "
             f"threads, CUDA {'yes' if summary['machine']['cuda'] else 'no'}, torch "
             f"{summary['machine']['torch']}.", "",
             "Threads: the torch threads of the step's process; load: the machine's load "
             "averages over 1, 5 and 15 minutes when the step ended (above the threads, "
             "something shared the cores).", "",
             "| step | minutes | threads | load | command |", "|---|---|---|---|---|"]
    for s in summary["steps"]:
        minutes = "" if s["seconds"] is None else f"{s['seconds'] / 60:.1f}"
        load = " / ".join(f"{v:.1f}" for v in s["load"]) if s.get("load") else ""
        shown = f"`{s['command']}`" if s["command"] else "(not recorded: run before this one)"
        lines.append(f"| {s['step']} | {minutes} | {s.get('threads', '')} | {load} | {shown} |")
    lines += [f"| **total** | **{summary['wall_seconds'] / 60:.1f}** | | | |", ""]
    if summary["checks"]:
        lines += ["Checks on the validation split (mean over seeds); the bars are the "
                  "experiment config's `checks`.", "",
                  "| check | value | result |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']:.4f} | {'ok' if c['ok'] else 'FAIL'} |"
                  for c in summary["checks"]]
        lines.append("")
    body = (results / "report.md").read_text().split("\n", 1)[1]
    metric = summary.get("metric", "accuracy")
    lines += [f"## Test-split {metric}", body,
              f"![{metric} vs k]({metric}_vs_k.png)", "",
              f"![{metric} vs MB]({metric}_vs_mb.png)", ""]
    if (results / "per_byte.md").is_file():
        lines += ["## Accuracy per byte against the teacher's early exits", "",
                  (results / "per_byte.md").read_text(), "![per byte](per_byte.png)", ""]
    (results / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fmnist_resnet_narrow")
    parser.add_argument("--runs", type=Path, default=None,
                        help="run directories (default runs/reproduce/<experiment>)")
    parser.add_argument("--results", type=Path, default=None,
                        help="tables and plots (default <runs>/report; the tracked record is "
                             "only written with --record)")
    parser.add_argument("--record", type=Path, default=None,
                        help="the recorded results to compare with (default "
                             "experiments/results/<experiment>)")
    parser.add_argument("--force", action="store_true", help="redo finished steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="distillation seeds (the teacher is trained once)")
    parser.add_argument("--losses", nargs="+", default=["pwl", "kd"],
                        help="loss presets to distil with (conf/loss); kd is the baseline")
    parser.add_argument("--only", choices=("teacher", "distill"), default=None,
                        help="stop after this step: teacher (e.g. to share a teacher with a "
                             "sweep) or distill (distillations and their evaluations, e.g. to "
                             "run some seeds in a second process)")
    parser.add_argument("--early-exit", action="store_true",
                        help="also train the teacher early-exit baseline per seed and compare "
                             "its accuracy per byte with the first loss's prefix curve")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    known = sorted(p.stem for p in (ROOT / "conf" / "loss").glob("*.yaml"))
    unknown = [loss for loss in args.losses if loss not in known]
    if unknown:
        parser.error(f"--losses {unknown} are not loss presets {known}; put Hydra overrides "
                     "after `--`")
    if "posthoc" in args.losses and ("kd" not in args.losses
                                     or args.losses.index("kd") > args.losses.index("posthoc")):
        parser.error("--losses posthoc fits adapters to the kd run of the same seed; list kd "
                     "before it")

    exp = args.experiment
    runs = (args.runs or ROOT / "runs" / "reproduce" / exp).resolve()
    results = (args.results or runs / "report").resolve()
    record = (args.record or ROOT / "experiments" / "results" / exp).resolve()
    bars = experiment_checks(exp, args.overrides)
    py = [sys.executable, "-m"]
    common = [f"experiment={exp}", "logger=csv", *args.overrides]
    log: list[dict] = []
    ledger = runs / "steps.json"

    teacher = runs / "teacher"
    step("teacher", [*py, "pwl.train", "phase=teacher", *common, f"hydra.run.dir={teacher}"],
         teacher / "teacher.safetensors", log, args.force, ledger)
    if args.only == "teacher":
        return
    evals: dict[str, dict[str, list[Path]]] = {loss: {"val": [], "test": []}
                                               for loss in args.losses}
    for seed in args.seeds:
        for loss in args.losses:
            run = runs / f"distill_{loss}" / f"seed{seed}"
            name = f"{loss} seed {seed}"
            # test=false: the test split is read once, by the final evaluation below.
            frozen = ([f"student_from={runs / 'distill_kd' / f'seed{seed}'}"]
                      if loss == "posthoc" else [])
            # paper: the reference recipe exactly (its loss, optimizer and clipping)
            preset = "recipe=paper" if loss == "paper" else f"loss={loss}"
            step(f"distill {name}", [*py, "pwl.train", "phase=distill", preset,
                                     f"seed={seed}", f"teacher={teacher}", "test=false",
                                     *frozen, *common, f"hydra.run.dir={run}"],
                 run / "hybrid.safetensors", log, args.force, ledger)
            for split, orders in (("val", "[prefix]"), ("test", "[prefix,suffix,window]")):
                out = run / f"eval_{split}"
                step(f"evaluate {name} ({split})",
                     [*py, "pwl.evaluate", f"checkpoint={run}", f"split={split}",
                      f"orders={orders}", f"hydra.run.dir={out}"],
                     out / "stages.csv", log, args.force, ledger, in_process=True)
                evals[loss][split].append(out)
        if args.early_exit:
            exits = runs / "early_exit" / f"seed{seed}"
            step(f"early exit seed {seed}", [*py, "pwl.train", "phase=early_exit",
                                             f"seed={seed}", f"teacher={teacher}", *common,
                                             f"hydra.run.dir={exits}"],
                 exits / "exits_test.csv", log, args.force, ledger)
    if args.only == "distill":
        return
    first = runs / f"distill_{args.losses[0]}" / f"seed{args.seeds[0]}"
    bundle = runs / "bundle"
    step("export", [*py, "pwl.export", f"checkpoint={first}", f"out={bundle}",
                    f"hydra.run.dir={runs / 'export'}"],
         bundle / "manifest.json", log, args.force, ledger, in_process=True)

    start = time.perf_counter()
    pairs = [(loss, "kd") for loss in args.losses if loss != "kd" and "kd" in args.losses]
    if {"pwl", "paper"} <= set(args.losses):
        pairs.append(("pwl", "paper"))
    if {"pwl", "posthoc"} <= set(args.losses):  # joint training against fitting afterwards
        pairs.append(("pwl", "posthoc"))
    test_dirs = [d for loss in args.losses for d in evals[loss]["test"]]
    report(test_dirs, results, split="test", pairs=pairs)
    n = len(next(iter(accuracies(test_dirs[0] / "stages.csv")))[1])
    subject = next(loss for loss in args.losses if loss != "kd") if set(args.losses) - {"kd"} \
        else None
    results_checks = (checks(mean_accuracies([d / "stages.csv" for d in evals[subject]["val"]]),
                             mean_accuracies([d / "stages.csv" for d in evals["kd"]["val"]])
                             if "kd" in evals else None, n, bars)
                      if subject and bars else [])
    if args.early_exit:
        subject_runs = [runs / f"distill_{args.losses[0]}" / f"seed{s}" for s in args.seeds]
        per_byte(subject_runs, [runs / "early_exit" / f"seed{s}" for s in args.seeds],
                 args.losses[0], results)
    shown = portable([*py, "pwl.report", *map(str, test_dirs), "--out", str(results),
                      *[f"--paired={a},{b}" for a, b in pairs]])
    log.append({"step": "report", "command": shown,
                "seconds": round(time.perf_counter() - start, 1), "skipped": False})
    total = sum(s["seconds"] or 0 for s in log)
    summary = {
        "experiment": exp, "seeds": args.seeds, "losses": args.losses,
        "overrides": args.overrides, "runs": str(runs),
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available(), "torch": torch.__version__},
        "steps": log, "wall_seconds": round(total, 1), "checks": results_checks,
        "metric": metric_of_rows(read_stages(test_dirs[0] / "stages.csv")).name,
    }
    (results / "reproduce.json").write_text(json.dumps(summary, indent=2))
    write_readme(results, summary)
    write_provenance(results, invocation(), log, *training_precision(exp, args.overrides))
    print(f"\nwall time {total / 60:.1f} min (sum of the steps); runs in {runs}; "
          f"report in {results}")
    for c in results_checks:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['value']:.4f}")
    if record != results and (record / "summary.csv").is_file():
        print(compare_with_record(results / "summary.csv", record / "summary.csv",
                                  metric_named(summary["metric"])))


if __name__ == "__main__":
    main()
