"""A real multirun sweep over two axes, and the report built from its run directories."""

import csv
from pathlib import Path

from pwl import report
from pwl.train import train
from tests.conftest import TINY, run_module, tiny_train_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_multirun_sweep_and_report(tmp_path):
    teacher = tmp_path / "teacher"
    train(tiny_train_cfg(teacher, "stage=teacher", "test=false"))
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "pwl.train", "-m", "stage=distill", f"teacher={teacher}", *TINY,
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "callbacks.stage_eval.orders=[prefix,suffix]",
        "loss.terms.feature_sync.distance=mse,cosine",
        "loss.terms.cross_path.mode=random,all_prefix", f"hydra.sweep.dir={sweep_dir}",
        cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(runs) == 4
    assert all((r / "stages_test.csv").is_file() for r in runs)

    out = tmp_path / "report"
    report.main([str(sweep_dir), "--out", str(out)])
    table = (out / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| stage"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    assert len(columns) == 4
    assert all("distance=" in c and "mode=" in c for c in columns)
    assert "## Prefix loading" in table and "## Suffix loading" in table
    assert "| student |" in table and "| T1-2 + S |" in table and "| teacher |" in table
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == set(columns)
    assert (out / "accuracy_vs_k.png").stat().st_size > 0
    assert (out / "accuracy_vs_mb.png").stat().st_size > 0


def test_pareto_front():
    pts = [(0, 0.80), (1, 0.79), (1, 0.85), (2, 0.84), (3, 0.90)]
    assert report.pareto(pts) == [(0, 0.80), (1, 0.85), (3, 0.90)]
