"""A real multirun sweep over two axes, and the report built from its run directories."""

import csv
from pathlib import Path

import pytest

from pwl import report
from pwl.train import train
from tests.conftest import TINY, run_module, tiny_train_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_multirun_sweep_and_report(tmp_path):
    teacher = tmp_path / "teacher"
    train(tiny_train_cfg(teacher, "phase=teacher", "test=false"))
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "pwl.train", "-m", "phase=distill", f"teacher={teacher}", *TINY,
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
    for plot in ("accuracy_vs_k.png", "accuracy_vs_mb.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front():
    pts = [(0, 0.80), (1, 0.79), (1, 0.85), (2, 0.84), (3, 0.90)]
    assert report.pareto(pts) == [(0, 0.80), (1, 0.85), (3, 0.90)]


def test_summarise_matches_the_t_interval_worked_by_hand():
    # mean 0.92; sample std 0.02; sem 0.02 / sqrt(3) = 0.0115470; t(0.975, df=2) = 4.3026527
    s = report.summarise([0.90, 0.92, 0.94])
    assert s.n == 3
    assert abs(s.mean - 0.92) < 1e-12 and abs(s.std - 0.02) < 1e-12
    assert abs(s.low - (0.92 - 4.3026527 * 0.0115470)) < 1e-6
    assert abs(s.high - (0.92 + 4.3026527 * 0.0115470)) < 1e-6
    one = report.summarise([0.5])
    assert one.mean == 0.5 and one.std != one.std  # NaN: no spread from one seed


def write_run(path: Path, seed: int, loss: str, prefix: list[float]) -> None:
    """A run directory with a test-split stages CSV and the Hydra config of its training."""
    n = len(prefix) - 1
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nloss:\n  name: {loss}\nmodel:\n  name: tiny\n")
    (path / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n- loss={loss}\n")
    rows = ["epoch,order,k,mask,accuracy,teacher_params,bytes_loaded,ms_per_batch"]
    rows += [f"0,prefix,{k},{'T' * k + 'S' * (n - k)},{acc},0,{1000 * k},1.0"
             for k, acc in enumerate(prefix)]
    (path / "stages_test.csv").write_text("\n".join(rows) + "\n")


def test_seeds_become_one_column_with_an_interval_and_a_paired_difference(tmp_path):
    pwl = [[0.80, 0.85, 0.90], [0.82, 0.86, 0.90], [0.84, 0.87, 0.90]]
    kd = [[0.79, 0.10, 0.90], [0.80, 0.10, 0.90], [0.81, 0.10, 0.90]]
    for seed in range(3):
        write_run(tmp_path / "runs" / f"pwl{seed}", seed, "pwl", pwl[seed])
        write_run(tmp_path / "runs" / f"kd{seed}", seed, "kd", kd[seed])
    out = tmp_path / "out"
    report.main([str(tmp_path / "runs"), "--out", str(out), "--paired", "pwl,kd"])
    table = (out / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| stage"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == ["loss=kd", "loss=pwl"]
    # pwl student: 82 +- 2 points, interval 82 -+ 4.3026527 * 2 / sqrt(3) = [77.03, 86.97]
    assert "| student | 80.00 ± 1.00 [77.52, 82.48] | 82.00 ± 2.00 [77.03, 86.97] |" in table
    with (out / "paired.csv").open() as f:
        diffs = {r["stage"]: r for r in csv.DictReader(f) if r["order"] == "prefix"}
    # student differences by seed: 0.01, 0.02, 0.03 -> mean 0.02, std 0.01
    assert diffs["student"]["n"] == "3"
    assert abs(float(diffs["student"]["mean"]) - 0.02) < 1e-12
    assert abs(float(diffs["student"]["std"]) - 0.01) < 1e-12
    assert abs(float(diffs["teacher"]["mean"])) < 1e-12
    assert (out / "accuracy_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
