"""Tables and plots of the paper's layout from run and multirun directories.

    python -m pwl.report RUN_OR_MULTIRUN_DIR [...] --out DIR [--split test|val]
    pwl-report RUN_OR_MULTIRUN_DIR [...] --out DIR

Every run directory below the given ones that holds ``stages_test.csv`` (test
split, from the end of training or ``pwl.evaluate``) or ``stages.csv``
(validation curve per epoch; its last epoch is used) becomes one column.
Columns are named by what sets the runs apart: the Hydra overrides that differ
between them, else the experiment, model and loss names.

Writes ``report.md`` (a table per loading order: rows student, T1 + S, T1-2 + S,
..., teacher, aligned by k so pairs of any N share a table), ``report.csv`` (the same numbers, tidy), ``accuracy_vs_k.png`` and
``accuracy_vs_mb.png`` (every mask, with each run's Pareto front marked).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pwl.errors import CheckpointError, PWLError
from pwl.stages import last_epoch, read_stages

ORDER_TITLES = {"prefix": "Prefix loading (teacher blocks from the input side)",
                "suffix": "Suffix loading (teacher blocks from the output side)",
                "window": "Window loading (one contiguous run of teacher blocks)",
                "custom": "Other masks"}


@dataclass
class Run:
    path: Path
    rows: list[dict]
    config: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    label: str = ""


def shown(path: Path) -> str:
    """A run's path as the reader will type it: relative to the working directory when inside it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _read_yaml(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def load_run(run_dir: Path, split: str) -> Run | None:
    files = {"test": ["stages_test.csv", "stages.csv"], "val": ["stages.csv"]}[split]
    for name in files:
        path = run_dir / name
        if path.is_file():
            rows = [asdict(r) for r in last_epoch(read_stages(path))]
            if not rows:
                continue
            hydra_dir = run_dir / ".hydra"
            if not hydra_dir.is_dir() and (run_dir.parent / ".hydra").is_dir():
                hydra_dir = run_dir.parent / ".hydra"
            config = _read_yaml(hydra_dir / "config.yaml") or {}
            if config.get("checkpoint"):  # an evaluation: describe the run it evaluated
                source = Path(config["checkpoint"])
                source = source if source.is_dir() else source.parent
                config = {**(_read_yaml(source / ".hydra" / "config.yaml") or {}), **config}
            return Run(run_dir, rows, config, _read_yaml(hydra_dir / "overrides.yaml") or [])
    return None


def find_runs(roots: list[Path], split: str) -> list[Run]:
    seen, runs = set(), []
    for root in roots:
        if not root.exists():
            raise CheckpointError(f"{root} does not exist; pass run or multirun directories")
        for csv_path in sorted(root.rglob("stages*.csv")):
            run_dir = csv_path.parent
            if run_dir in seen:
                continue
            seen.add(run_dir)
            run = load_run(run_dir, split)
            if run:
                runs.append(run)
    return runs


def label_runs(runs: list[Run]) -> None:
    """Names each run by the overrides that differ between runs."""
    ignore = ("hydra.", "run_dir", "teacher=", "checkpoint=", "out=")
    sets = [{o for o in r.overrides if not o.startswith(ignore)} for r in runs]
    common = set.intersection(*sets) if sets else set()
    for run, s in zip(runs, sets):
        distinct = sorted(s - common)
        if distinct:
            run.label = " ".join(distinct)
        else:
            cfg = run.config
            parts = [cfg.get("model", {}).get("name"), cfg.get("loss", {}).get("name")]
            run.label = "/".join(p for p in parts if p) or run.path.name
    counts: dict[str, int] = {}
    for run in runs:  # keep labels unique
        counts[run.label] = counts.get(run.label, 0) + 1
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"


def row_key(mask: str, order: str) -> tuple[int, str]:
    """Sort key and row label of a mask; prefix/suffix rows align by k across any N."""
    n, k = len(mask), mask.count("T")
    if k == 0:
        return (0, "student")
    if k == n:
        return (1 << 30, "teacher")
    if order == "prefix":
        return (k, f"T1-{k} + S" if k > 1 else "T1 + S")
    if order == "suffix":
        return (k, f"S + last {k} T")
    return (k, mask)


def markdown(runs: list[Run]) -> str:
    out = ["# Accuracy at every partial-teacher stage", "",
           "Accuracy (%) on the evaluation split; one column per run.", ""]
    for r in runs:
        n = len(r.rows[0]["mask"])
        out.append(f"- **{r.label}**: N={n}, `{shown(r.path)}`")
    orders = [o for o in ORDER_TITLES if any(row["order"] == o for r in runs for row in r.rows)]
    for order in orders:
        keys = sorted({row_key(row["mask"], order) for r in runs for row in r.rows
                       if row["order"] == order})
        out += ["", f"## {ORDER_TITLES[order]}", "",
                "| stage | " + " | ".join(r.label for r in runs) + " |",
                "|---|" + "---|" * len(runs)]
        for key in keys:
            cells = []
            for r in runs:
                acc = next((row["accuracy"] for row in r.rows if row["order"] == order
                            and row_key(row["mask"], order) == key), None)
                cells.append("" if acc is None else f"{100 * acc:.2f}")
            out.append(f"| {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both fewer bytes and higher accuracy, by bytes."""
    front, best = [], -1.0
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plots(runs: list[Run], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        for order in ("prefix", "suffix", "window"):
            rows = sorted((row for row in r.rows if row["order"] == order), key=lambda x: x["k"])
            if order == "window":  # best window per k
                by_k: dict[int, float] = {}
                for row in rows:
                    by_k[row["k"]] = max(by_k.get(row["k"], 0), row["accuracy"])
                xs, ys = list(by_k), list(by_k.values())
            else:
                xs, ys = [row["k"] for row in rows], [row["accuracy"] for row in rows]
            if xs:
                ax.plot(xs, [100 * y for y in ys], marker="o",
                        linestyle={"prefix": "-", "suffix": "--", "window": ":"}[order],
                        label=f"{r.label} · {order}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("teacher blocks loaded (k)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_k.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in runs:
        pts = {(row["bytes_loaded"] / 1e6, 100 * row["accuracy"]) for row in r.rows}
        line = ax.scatter(*zip(*pts), s=14, alpha=0.5, label=f"{r.label} · masks")
        front = pareto(list(pts))
        ax.plot(*zip(*front), color=line.get_facecolor()[0], marker="D", markersize=4,
                linewidth=1.2, label=f"{r.label} · Pareto front")
    ax.set_xlabel("MB of teacher weights loaded beyond the student")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_mb.png", dpi=120)
    plt.close(fig)


def write_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "path", "order", "k", "mask", "accuracy", "bytes_loaded"])
        for r in runs:
            for row in r.rows:
                w.writerow([r.label, shown(r.path), row["order"], row["k"], row["mask"],
                            row["accuracy"], row["bytes_loaded"]])


def report(roots: list[Path], out: Path, split: str = "test") -> list[Run]:
    runs = find_runs(roots, split)
    if not runs:
        raise CheckpointError(f"no stages.csv or stages_test.csv under {[str(r) for r in roots]}; "
                              "train with phase=distill or run `python -m pwl.evaluate` first")
    label_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(runs))
    write_csv(runs, out / "report.csv")
    plots(runs, out)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, required=True, help="where to write the report")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test: stages_test.csv when present; val: last epoch of stages.csv")
    args = parser.parse_args(argv)
    try:
        runs = report(args.dirs, args.out, args.split)
    except PWLError as e:
        sys.exit(f"error: {e}")
    print(f"{len(runs)} runs -> {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
