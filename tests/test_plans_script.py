"""experiments/plans.py: the tables of its README, from hand-written plan and curve files."""

import csv
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plans():
    return load_script("plans")


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_plan_table_gives_areas_and_the_ratio_to_prefix(plans, tmp_path):
    # N=2, blocks of 1 MB and 3 MB; the accuracy listed at a step holds while the next block
    # arrives. The plan loads the big block first: mean (0.5 * 3 + 0.8 * 1) / 4 = 0.575.
    # prefix loads the small one first: (0.5 * 1 + 0.7 * 3) / 4 = 0.65.
    sizes = {0: 1_000_000, 1: 3_000_000}
    rows = []
    for order, blocks, accs in (("plan", [1, 0], [0.5, 0.8, 0.9]),
                                ("prefix", [0, 1], [0.5, 0.7, 0.9])):
        mean = sum(accs[i] * sizes[b] for i, b in enumerate(blocks)) / 4_000_000
        loaded = 0
        for step, (block, acc) in enumerate(zip([-1, *blocks], accs)):
            loaded += sizes.get(block, 0)
            rows.append({"order": order, "step": step, "mask": "", "block": block,
                         "block_bytes": sizes.get(block, 0), "bytes_loaded": loaded,
                         "accuracy": acc, "mean_accuracy": mean})
    lines = plans.plan_table(write_csv(tmp_path / "plan.csv", rows))
    # The area is the mean times the teacher's 4 MB; the ratio is against prefix.
    assert lines[2] == f"| plan | 1 0 | {0.575 * 4:.4f} | 0.5750 | {0.575 / 0.65:.4f} |"
    assert lines[3] == f"| prefix | 0 1 | {0.65 * 4:.4f} | 0.6500 | 1.0000 |"


def test_curves_table_renders_never_and_percentages(plans, tmp_path):
    row = {"target": "b", "bandwidth": "1 MB/s", "dtype": "int8", "order": "plan=prefix",
           "teacher_bytes": 2048, "first_answer_s": 0.1234, "loaded_s": 9.87,
           "time_to_teacher_s": "", "mean_accuracy_load": 0.9, "window_s": 10.0,
           "mean_accuracy_window": 0.91, "area_ratio": 1.02, "max_flip": 0.0125, "flips": ""}
    lines = plans.curves_table(write_csv(tmp_path / "curves.csv", [row]))
    assert lines[2] == ("| int8 | plan=prefix | 2.0 KB | 0.123 | 9.87 | never | 0.9000 | "
                        "0.9100 | 1.0200 | 1.25% |")
