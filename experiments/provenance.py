"""``provenance.json``: what made a results directory, written by the tool that made it.

    python experiments/provenance.py --backfill <results dir> [--note TEXT]
    python experiments/provenance.py --strip-unmeasured <results dir>
    python experiments/provenance.py --run <results dir> -- <command ...>

Every results directory under ``experiments/results/`` carries one. The tools that
write results (``reproduce.py``, ``plans.py``) call ``write_provenance`` with the
exact command, the precision and memory format of their training runs and each
step's wall time as this run measured it; a step this run did not execute has
``seconds: null``, never a number from elsewhere. ``--backfill`` gives a directory
recorded before provenance existed a record that says so: every field this tool
cannot know now (commit, machine, step times) is null. ``--run`` runs a command that writes a results directory (a ``pwl.bench`` into its
``hydra.run.dir``, say), keeps its console output as ``console.txt`` and writes the
directory's provenance with the command and its measured wall time. ``--strip-unmeasured`` nulls the
times that a results file carried for steps its run skipped (``"skipped": true``: the
run did not measure them) in its ``reproduce.json``/``plans.json`` and README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
NAME = "provenance.json"
# What a step's time depended on besides its work (experiments/reproduce.py records them).
LOAD_KEYS = ("threads", "load")
KEYS = ("command", "commit", "dirty", "cpu_model", "cores", "torch", "precision",
        "memory_format", "steps", "written")


def git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_precision(experiment: str, overrides: Sequence[str]) -> tuple[str, str]:
    """The precision and memory format the training runs of ``experiment`` use here."""
    from hydra import compose, initialize_config_dir

    from pwl.speed import resolve_precision

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])
    precision, _ = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return str(precision), "channels_last" if cfg.channels_last else "contiguous"


def provenance(command: Sequence[str] | str, steps: Sequence[dict[str, Any]],
               precision: str | None, memory_format: str | None) -> dict[str, Any]:
    status = git("status", "--porcelain")
    return {
        "command": command if isinstance(command, str) else shlex.join(command),
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "precision": precision,
        "memory_format": memory_format,
        "steps": [{"step": s["step"], "command": s.get("command"), "seconds": None}
                  if s.get("skipped") else
                  {"step": s["step"], "command": s.get("command"), "seconds": s["seconds"],
                   **{k: s[k] for k in LOAD_KEYS if k in s}}
                  for s in steps],
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_provenance(results: Path, command: Sequence[str] | str,
                     steps: Sequence[dict[str, Any]], precision: str | None = None,
                     memory_format: str | None = None) -> Path:
    path = results / NAME
    path.write_text(json.dumps(provenance(command, steps, precision, memory_format),
                               indent=2) + "\n")
    return path


def invocation() -> list[str]:
    """This process's command line as a user types it in their clone."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return ["python", shown, *sys.argv[1:]]


def strip_unmeasured(results: Path) -> list[str]:
    """Nulls the seconds of skipped steps in ``results``' step file and README; their names."""
    stripped: list[str] = []
    for name in ("reproduce.json", "plans.json"):
        path = results / name
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        for s in summary["steps"]:
            if s.get("skipped") and s["seconds"] is not None:
                s["seconds"] = None
                stripped.append(s["step"])
        if "wall_seconds" in summary:
            summary["wall_seconds"] = round(sum(s["seconds"] or 0 for s in summary["steps"]), 1)
        path.write_text(json.dumps(summary, indent=2))
        readme = results / "README.md"
        if readme.is_file() and stripped:
            lines = readme.read_text().split("\n")
            for i, line in enumerate(lines):
                cells = line.split(" | ")
                if len(cells) > 2 and cells[0].removeprefix("| ") in stripped:
                    cells[1] = ""
                    lines[i] = " | ".join(cells)
                elif line.startswith("| **total** |") and "wall_seconds" in summary:
                    lines[i] = (f"| **total** | **{summary['wall_seconds'] / 60:.1f}** (steps "
                                "this run measured) | |")
            readme.write_text("\n".join(lines))
    return stripped


def run_and_record(results: Path, command: Sequence[str]) -> int:
    """Runs ``command`` in the repository root (``python`` is this interpreter), keeps its
    console output in ``results/console.txt`` and, when it succeeds, writes ``results``'
    provenance with its wall time; its exit status."""
    argv = [sys.executable if c == "python" else c for c in command]
    began = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, text=True, capture_output=True)
    seconds = round(time.perf_counter() - began, 1)
    print(proc.stdout, end="")
    print(proc.stderr, end="", file=sys.stderr)
    if proc.returncode != 0:
        print(f"error: the command exited with {proc.returncode}; no provenance written",
              file=sys.stderr)
        return proc.returncode
    results.mkdir(parents=True, exist_ok=True)
    (results / "console.txt").write_text(proc.stdout)
    write_provenance(results, command, [{"step": "run", "command": shlex.join(command),
                                         "seconds": seconds}])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--backfill", type=Path,
                      help="a results directory recorded before provenance existed")
    what.add_argument("--strip-unmeasured", type=Path, help="a results directory")
    what.add_argument("--run", type=Path, help="the results directory the command writes")
    parser.add_argument("--note", default="", help="what is known of how it was made")
    parser.add_argument("command", nargs="*", help="--run: the command, after --")
    args = parser.parse_args()
    if args.run:
        if not args.command:
            sys.exit("error: --run needs the command after --, e.g. -- python -m pwl.bench ...")
        sys.exit(run_and_record(args.run, args.command))
    if args.strip_unmeasured:
        print(f"{args.strip_unmeasured}: nulled {strip_unmeasured(args.strip_unmeasured)}")
        return
    path = args.backfill / NAME
    if path.exists():
        sys.exit(f"error: {path} exists; a backfill never replaces a tool's record")
    record = {key: None for key in KEYS}
    record.update(steps=[], backfilled=True, note=args.note,
                  written=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
