"""A student width chosen on the validation split, by a rule fixed before the runs.

    python experiments/choices.py --teacher RUN --candidates RUN [RUN ...] --out DIR
                                  [--monitor val/bpc] [--gap 0.25]

Each run is a ``pwl.train phase=teacher`` directory (the teacher, and each candidate
student trained alone in the teacher phase, ``model.teacher=${model.student}``). From
each run's ``csv/metrics.csv`` it reads the best validation value of ``--monitor`` over
the epochs (the checkpoint the run keeps; lowest for bits per character and losses,
highest for accuracy). The rule: **the first candidate, in the order given (widest
first), whose value is at least ``--gap`` worse than the teacher's**, so that the
distilled student leaves the loading curve room to climb. Writes ``choices.csv``,
``README.md`` (the table and the pick) and ``provenance.json`` into ``--out``; the test
split is never read.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from pathlib import Path

import yaml
from provenance import invocation, write_provenance


def best_value(run: Path, monitor: str, higher_is_better: bool) -> tuple[float, int]:
    """The best ``monitor`` value of a run over its epochs and the epoch it came at."""
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        sys.exit(f"error: {path} is missing; pass a pwl.train run directory with logger=csv")
    with path.open(newline="") as f:
        rows = [(float(r[monitor]), int(r["epoch"])) for r in csv.DictReader(f)
                if r.get(monitor)]
    if not rows:
        sys.exit(f"error: {path} has no {monitor!r} values; pass --monitor")
    return (max if higher_is_better else min)(rows)


def overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, nargs="+", required=True,
                        help="candidate student runs, widest first")
    parser.add_argument("--monitor", default="val/bpc")
    parser.add_argument("--gap", type=float, default=0.25,
                        help="how much worse than the teacher the candidate must be")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    higher_is_better = args.monitor.endswith("acc")  # accuracy; bpc and losses fall
    teacher, teacher_epoch = best_value(args.teacher, args.monitor, higher_is_better)
    sign = -1 if higher_is_better else 1  # "worse": lower accuracy, higher bpc
    rows, chosen = [], None
    for run in args.candidates:
        value, epoch = best_value(run, args.monitor, higher_is_better)
        gap = sign * (value - teacher)
        pick = chosen is None and gap >= args.gap
        chosen = run if pick else chosen
        rows.append({"run": str(run), "overrides": " ".join(o for o in overrides(run)
                                                            if o.startswith("model.student")),
                     "epoch": epoch, args.monitor: round(value, 4), "gap": round(gap, 4),
                     "chosen": pick})
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "choices.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Student width chosen on the validation split ({args.monitor})", "",
             f"Teacher: `{args.teacher}`, best {args.monitor} {teacher:.4f} (epoch "
             f"{teacher_epoch}). The rule, fixed before the runs: the widest candidate at "
             f"least {args.gap:g} worse than the teacher.", "",
             f"| candidate | best {args.monitor} | epoch | worse than the teacher by | chosen |",
             "|---|---|---|---|---|"]
    lines += [f"| `{r['overrides']}` | {r[args.monitor]:.4f} | {r['epoch']} | {r['gap']:.4f} | "
              f"{'yes' if r['chosen'] else ''} |" for r in rows]
    lines += ["", "no candidate meets the rule" if chosen is None else f"Chosen: `{chosen}`.",
              "", "Runs (each one's command is in its `.hydra/overrides.yaml`):", ""]
    lines += [f"- `{run}`: `python -m pwl.train {shlex.join(overrides(run))}`"
              for run in (args.teacher, *args.candidates)]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    steps = [{"step": str(run), "command": "python -m pwl.train " + shlex.join(overrides(run)),
              "seconds": None} for run in (args.teacher, *args.candidates)]
    write_provenance(args.out, invocation(), steps)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
