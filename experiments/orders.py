"""Loading orders compared within each run: is prefix loading the best order?

    python experiments/orders.py RESULTS [RESULTS ...] --out DIR

Each RESULTS is a reproduction's results directory; its ``report.csv`` (written by
``pwl.report``) holds every run's test metric at every stage of the orders it was
evaluated on. For each run, the score of an order is its mean metric over the mixed
stages (student and teacher are shared by every order, so they are left out); a window
order's mixed stages are all its contiguous runs of teacher blocks. The orders are
compared within a run (the same seed, the same weights), then over the runs of a
column: prefix minus suffix and prefix minus window, each a mean with its 95% t-interval
over seeds. Writes ``orders.csv``, ``README.md`` and ``provenance.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

from provenance import invocation, write_provenance

from pwl.report import summarise

ORDERS = ("prefix", "suffix", "window")
# the columns pwl.report's report.csv always has; a task's own metric follows them
REPORT_COLUMNS = ("run", "path", "order", "k", "mask", "accuracy", "bytes_loaded")


def order_scores(report_csv: Path) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    """The report's metric and ``{column: {run path: {order: mean metric over its mixed
    stages}}}``.

    The metric is the one ``pwl.report`` wrote after its fixed columns (a language model's
    ``bpc``), else accuracy."""
    with report_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    if not rows:
        sys.exit(f"error: {report_csv} has no rows; pass a reproduction's results directory")
    extra = [c for c in reader.fieldnames if c not in REPORT_COLUMNS]
    metric = extra[0] if extra else "accuracy"
    stages: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["order"] in ORDERS and 0 < r["mask"].count("T") < len(r["mask"]):
            stages[(r["run"], r["path"], r["order"])].append(float(r[metric]))
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for (column, path, order), values in stages.items():
        scores[column][path][order] = sum(values) / len(values)
    return metric, {c: dict(runs) for c, runs in scores.items()}


def compare(runs: dict[str, dict[str, float]]) -> list[dict]:
    """Each order's score over a column's runs, and prefix minus each other order, paired by
    run; rows of ``orders.csv`` without the column."""
    out = []
    for order in ORDERS:
        have = [s for s in runs.values() if order in s]
        if have:
            sm = summarise([s[order] for s in have])
            out.append({"what": order, "n": sm.n, "mean": sm.mean, "ci95_low": sm.low,
                        "ci95_high": sm.high})
    for other in ORDERS[1:]:
        both = [s for s in runs.values() if "prefix" in s and other in s]
        if both:
            sm = summarise([s["prefix"] - s[other] for s in both])
            out.append({"what": f"prefix - {other}", "n": sm.n, "mean": sm.mean,
                        "ci95_low": sm.low, "ci95_high": sm.high})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="reproduction results directories (each with its report.csv)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    table = []
    for results in args.results:
        path = results / "report.csv"
        if not path.is_file():
            sys.exit(f"error: {path} is missing; pass a results directory that "
                     "experiments/reproduce.py wrote")
        metric, scores = order_scores(path)
        for column, runs in scores.items():
            table += [{"results": str(results), "column": column, "metric": metric, **row}
                      for row in compare(runs)]
    if not table:
        sys.exit(f"error: no run has mixed stages of {ORDERS}; evaluate with "
                 "orders=[prefix,suffix,window]")
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "orders.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    lines = ["# Loading orders compared within each run", "",
             "Test split. An order's score is its mean metric over the mixed stages "
             "(accuracy in %; bits per character for a language model, lower is better); "
             "each difference is paired by run (same seed, same weights): mean [95% "
             "t-interval] over the runs.", "",
             "| column | what | n | mean [95% interval] |", "|---|---|---|---|"]
    for r in table:
        scale, digits = (100, 2) if r["metric"] == "accuracy" else (1, 3)
        sign = "+" if " - " in r["what"] else ""
        interval = ("" if r["n"] == 1 else
                    f" [{scale * r['ci95_low']:{sign}.{digits}f}, "
                    f"{scale * r['ci95_high']:{sign}.{digits}f}]")
        lines.append(f"| {r['column']} | {r['what']} | {r['n']} | "
                     f"{scale * r['mean']:{sign}.{digits}f}{interval} |")
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    write_provenance(args.out, invocation(), [])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
