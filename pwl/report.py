"""Tables and plots of the paper's layout from run and multirun directories.

    python -m pwl.report RUN_OR_MULTIRUN_DIR [...] --out DIR [--split test|val]
    pwl-report RUN_OR_MULTIRUN_DIR [...] --out DIR

Every run directory below the given ones that holds ``stages_test.csv`` (test
split, from the end of training or ``pwl.evaluate``) or ``stages.csv``
(validation curve per epoch; its last epoch is used) is one run. Runs are
named by what sets them apart: the Hydra overrides that differ between them
(``seed=`` aside), else the model and loss names. Runs that share a name and
differ in their seed are one column: mean +- standard deviation over seeds and
a 95% confidence interval (Student's t, from scipy). ``--paired A,B`` adds the
paired difference A - B per stage, over the seeds both have.

Writes ``report.md`` (a table per loading order: rows student, T1 + S, T1-2 + S,
..., teacher, aligned by k so pairs of any N share a table), ``report.csv`` (every
run's numbers, tidy), ``summary.csv`` (per column and stage: n, mean, std, 95%
interval), ``paired.csv`` (with ``--paired``), ``<metric>_vs_k.png`` (mean over
seeds with a band for the interval) and ``<metric>_vs_mb.png`` (every mask, with
each column's Pareto front marked).

The numbers are the runs' stage metric (``pwl.stages.metrics``): accuracy in percent
for classifiers (``accuracy_vs_k.png``...), bits per character for language models
(``bpc_vs_k.png``..., lower is better). Runs of one report share one metric.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from pwl.errors import CheckpointError, ConfigError, PWLError
from pwl.stages import last_epoch, read_stages
from pwl.stages.files import metric_of_rows
from pwl.stages.metrics import ACCURACY, StageMetric

ORDER_TITLES = {"prefix": "Prefix loading (teacher blocks from the input side)",
                "suffix": "Suffix loading (teacher blocks from the output side)",
                "window": "Window loading (one contiguous run of teacher blocks)",
                "all": "Every mask",
                "custom": "Other masks"}


@dataclass
class Run:
    path: Path
    rows: list[dict]
    config: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    label: str = ""
    metric: StageMetric = ACCURACY

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    def value(self, order: str, key: tuple[int, str]) -> float | None:
        """The run's metric at one stage."""
        return next((row[self.metric.name] for row in self.rows if row["order"] == order
                     and row_key(row["mask"], order) == key), None)


@dataclass(frozen=True)
class Summary:
    """Statistics of one stage over seeds; ``low``/``high`` bound the 95% interval (NaN for n=1)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def summarise(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("summarise needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=stats.sem(x))
    return Summary(n, mean, std, float(low), float(high))


@dataclass
class Column:
    """Runs that differ only in their seed: one column of the tables."""

    label: str
    runs: list[Run]

    def values(self, order: str, key: tuple[int, str]) -> dict[int | None, float]:
        """The metric per seed at one stage (runs without the stage left out)."""
        out = {}
        for run in self.runs:
            value = run.value(order, key)
            if value is not None:
                out[run.seed] = value
        return out

    def summary(self, order: str, key: tuple[int, str]) -> Summary | None:
        values = list(self.values(order, key).values())
        return summarise(values) if values else None


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
            stage_rows = last_epoch(read_stages(path))
            rows = [asdict(r) for r in stage_rows]
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
            return Run(run_dir, rows, config, _read_yaml(hydra_dir / "overrides.yaml") or [],
                       metric=metric_of_rows(stage_rows))
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
    """Names each run by the overrides that differ between runs, seeds aside.

    Runs that then share a name but not a seed are seeds of one setting and keep
    the name; other name clashes get the run directory appended.
    """
    ignore = ("hydra.", "run_dir", "teacher=", "checkpoint=", "out=", "seed=")
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
    seen: dict[str, set] = {}
    for run in runs:  # a repeated (name, seed) is not a seed of the same setting
        seeds = seen.setdefault(run.label, set())
        if run.seed in seeds:
            run.label = f"{run.label} ({run.path.name})"
        seen.setdefault(run.label, set()).add(run.seed)


def columns_of(runs: list[Run]) -> list[Column]:
    """Runs grouped by label, in order of first appearance."""
    columns: dict[str, Column] = {}
    for run in runs:
        columns.setdefault(run.label, Column(run.label, [])).runs.append(run)
    return list(columns.values())


def scale(metric: StageMetric) -> tuple[float, str]:
    """How tables show ``metric``: accuracy in percent (2 decimals), bpc as it is (3)."""
    return (100.0, ".2f") if metric == ACCURACY else (1.0, ".3f")


def report_metric(runs: Sequence[Run]) -> StageMetric:
    """The metric every run shares.

    Raises:
        ConfigError: runs with different metrics (a classifier's and a language model's).
    """
    metrics = {r.metric for r in runs}
    if len(metrics) > 1:
        raise ConfigError(f"the runs hold different stage metrics {sorted(m.name for m in metrics)}; "
                          "report classifiers and language models separately")
    return metrics.pop() if metrics else ACCURACY


def cell(summary: Summary | None, metric: StageMetric = ACCURACY) -> str:
    """A table cell (accuracy in percent): one value, or mean +- std [95% interval] over seeds."""
    if summary is None:
        return ""
    k, f = scale(metric)
    if summary.n == 1:
        return f"{k * summary.mean:{f}}"
    return (f"{k * summary.mean:{f}} ± {k * summary.std:{f}} "
            f"[{k * summary.low:{f}}, {k * summary.high:{f}}]")


def stage_keys(runs: Sequence[Run], order: str) -> list[tuple[int, str]]:
    return sorted({row_key(row["mask"], order) for r in runs for row in r.rows
                   if row["order"] == order})


def find_column(columns: Sequence[Column], name: str) -> Column:
    """The column labelled ``name``, or the one whose runs used loss preset ``name``."""
    exact = [c for c in columns if c.label == name]
    by_loss = [c for c in columns
               if {r.config.get("loss", {}).get("name") for r in c.runs} == {name}]
    found = exact or by_loss
    if len(found) != 1:
        raise ConfigError(f"--paired names {name!r}, which matches {len(found)} columns of "
                          f"{[c.label for c in columns]}; give a column label or a loss name "
                          "that names exactly one")
    return found[0]


def paired(a: Column, b: Column, order: str, key: tuple[int, str]) -> Summary | None:
    """The difference a - b at one stage, paired by seed, over the seeds both have."""
    va, vb = a.values(order, key), b.values(order, key)
    shared = sorted(set(va) & set(vb), key=str)
    return summarise([va[s] - vb[s] for s in shared]) if shared else None


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


def markdown(runs: list[Run], columns: list[Column],
             pairs: Sequence[tuple[Column, Column]] = ()) -> str:
    metric = report_metric(runs)
    k, f = scale(metric)
    seeded = any(len(c.runs) > 1 for c in columns)
    what = ("mean ± standard deviation over seeds [95% confidence interval]" if seeded
            else "one run per column")
    unit = "Accuracy (%)" if metric == ACCURACY else \
        f"{metric.label[0].upper()}{metric.label[1:]} ({metric.name}, lower is better)"
    out = [f"# {metric.label[0].upper()}{metric.label[1:]} at every partial-teacher stage", "",
           f"{unit} on the evaluation split; {what}.", ""]
    for c in columns:
        n = len(c.runs[0].rows[0]["mask"])
        seeds = sorted((r.seed for r in c.runs), key=str)
        where = ", ".join(f"`{shown(r.path)}`" for r in c.runs)
        out.append(f"- **{c.label}**: N={n}, seeds {seeds}: {where}")
    orders = [o for o in ORDER_TITLES if any(row["order"] == o for r in runs for row in r.rows)]
    for order in orders:
        out += ["", f"## {ORDER_TITLES[order]}", "",
                "| stage | " + " | ".join(c.label for c in columns) + " |",
                "|---|" + "---|" * len(columns)]
        for key in stage_keys(runs, order):
            cells = [cell(c.summary(order, key), metric) for c in columns]
            out.append(f"| {key[1]} | " + " | ".join(cells) + " |")
    for a, b in pairs:
        out += ["", f"## Paired difference: {a.label} - {b.label}", "",
                f"{'Points of accuracy' if metric == ACCURACY else metric.name}, paired by "
                "seed; an interval that excludes 0 separates the two at 95%.", "",
                "| order | stage | n | mean | std | 95% interval |", "|---|---|---|---|---|---|"]
        for order in orders:
            for key in stage_keys(runs, order):
                d = paired(a, b, order, key)
                if d is None:
                    continue
                interval = ("" if d.n == 1 else
                            f"[{k * d.low:+{f}}, {k * d.high:+{f}}]")
                std = "" if d.n == 1 else f"{k * d.std:{f}}"
                out.append(f"| {order} | {key[1]} | {d.n} | {k * d.mean:+{f}} | {std} | "
                           f"{interval} |")
    return "\n".join(out) + "\n"


def pareto(points: list[tuple[float, float]],
           metric: StageMetric = ACCURACY) -> list[tuple[float, float]]:
    """Points no other point beats on both fewer bytes and a better metric, by bytes."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -metric.score(p[1]))):
        if metric.score(y) > best:
            front.append((x, y))
            best = metric.score(y)
    return front


def plots(runs: list[Run], columns: list[Column], out: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    metric = report_metric(runs)
    k_scale, _ = scale(metric)
    ylabel = "accuracy (%)" if metric == ACCURACY else f"{metric.label} (lower is better)"
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = {"prefix": "-", "suffix": "--", "window": ":"}
    for c in columns:
        for order, style in styles.items():
            if order == "window":  # best window per k, per run, then over seeds
                ks = sorted({row["k"] for r in c.runs for row in r.rows if row["order"] == order})
                per_k = [summarise([max((row[metric.name] for row in r.rows
                                         if row["order"] == order and row["k"] == k),
                                        key=metric.score)
                                    for r in c.runs
                                    if any(row["order"] == order and row["k"] == k
                                           for row in r.rows)]) for k in ks]
            else:
                keys = stage_keys(c.runs, order)
                ks = [k for k, _ in keys]
                ks = [min(k, len(c.runs[0].rows[0]["mask"])) for k in ks]
                per_k = [c.summary(order, key) for key in keys]
            if not ks:
                continue
            means = [k_scale * s.mean for s in per_k]
            (line,) = ax.plot(ks, means, marker="o", linestyle=style,
                              label=f"{c.label} · {order}")
            if all(s.n > 1 for s in per_k):
                ax.fill_between(ks, [k_scale * s.low for s in per_k],
                                [k_scale * s.high for s in per_k],
                                color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("teacher blocks loaded (k)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out / f"{metric.name}_vs_k.png", dpi=120)

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for c in columns:
        masks = {(row["order"], row["mask"]): row["bytes_loaded"] for r in c.runs for row in r.rows}
        pts = set()
        for (order, mask), nbytes in masks.items():
            summary = c.summary(order, row_key(mask, order))
            if summary is not None:
                pts.add((nbytes / 1e6, k_scale * summary.mean))
        dots = ax.scatter(*zip(*pts), s=14, alpha=0.5, label=f"{c.label} · masks")
        front = pareto(list(pts), metric)
        ax.plot(*zip(*front), color=dots.get_facecolor()[0], marker="D", markersize=4,
                linewidth=1.2, label=f"{c.label} · Pareto front")
    ax.set_xlabel("MB of teacher weights loaded beyond the student")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out / f"{metric.name}_vs_mb.png", dpi=120)


def write_csv(runs: list[Run], path: Path) -> None:
    extra = [] if report_metric(runs) == ACCURACY else [report_metric(runs).name]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "path", "order", "k", "mask", "accuracy", "bytes_loaded", *extra])
        for r in runs:
            for row in r.rows:
                w.writerow([r.label, shown(r.path), row["order"], row["k"], row["mask"],
                            row["accuracy"], row["bytes_loaded"], *(row[e] for e in extra)])


def write_summary(runs: list[Run], columns: list[Column], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["column", "order", "stage", "n", "mean", "std", "ci95_low", "ci95_high"])
        for c in columns:
            for order in ORDER_TITLES:
                for key in stage_keys(c.runs, order):
                    sm = c.summary(order, key)
                    if sm is not None:
                        w.writerow([c.label, order, key[1], sm.n, sm.mean, sm.std, sm.low,
                                    sm.high])


def write_paired(runs: list[Run], pairs: Sequence[tuple[Column, Column]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "order", "stage", "n", "mean", "std", "ci95_low", "ci95_high"])
        for a, b in pairs:
            for order in ORDER_TITLES:
                for key in stage_keys(runs, order):
                    d = paired(a, b, order, key)
                    if d is not None:
                        w.writerow([a.label, b.label, order, key[1], d.n, d.mean, d.std, d.low,
                                    d.high])


def report(roots: list[Path], out: Path, split: str = "test",
           pairs: Sequence[tuple[str, str]] = ()) -> list[Run]:
    """Writes the tables and plots of the runs under ``roots`` into ``out``.

    Args:
        roots: run or multirun directories.
        out: the report directory.
        split: ``test`` (``stages_test.csv`` where present) or ``val``.
        pairs: (A, B) column labels or loss names whose paired difference A - B is reported.
    """
    runs = find_runs(roots, split)
    if not runs:
        raise CheckpointError(f"no stages.csv or stages_test.csv under {[str(r) for r in roots]}; "
                              "train with phase=distill or run `python -m pwl.evaluate` first")
    label_runs(runs)
    columns = columns_of(runs)
    column_pairs = [(find_column(columns, a), find_column(columns, b)) for a, b in pairs]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(runs, columns, column_pairs))
    write_csv(runs, out / "report.csv")
    write_summary(runs, columns, out / "summary.csv")
    if column_pairs:
        write_paired(runs, column_pairs, out / "paired.csv")
    plots(runs, columns, out)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, required=True, help="where to write the report")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test: stages_test.csv when present; val: last epoch of stages.csv")
    parser.add_argument("--paired", action="append", default=[], metavar="A,B",
                        help="report A - B per stage paired by seed (column labels or loss "
                             "names); repeatable")
    args = parser.parse_args(argv)
    try:
        pairs = [tuple(p.split(",")) for p in args.paired]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"--paired {args.paired}: give two names separated by a comma, "
                              "e.g. --paired pwl,kd")
        runs = report(args.dirs, args.out, args.split, pairs)
    except PWLError as e:
        sys.exit(f"error: {e}")
    print(f"{len(runs)} runs -> {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
