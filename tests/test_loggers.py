"""W&B through a real multirun: names, groups and the blocks-loaded step metric, read offline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, wandb_records

ROOT = Path(__file__).resolve().parents[1]


def test_multirun_runs_are_named_by_overrides_grouped_by_sweep_with_curves_by_blocks(tmp_path):
    pytest.importorskip("wandb")
    teacher = tmp_path / "teacher"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path)}
    common = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=1"]
    subprocess.run([sys.executable, "-m", "pwl.train", "phase=teacher", *common, "test=false",
                    f"hydra.run.dir={teacher}"], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "pwl.train", "-m", "phase=distill", f"teacher={teacher}",
         *common, "logger=wandb", "loss.terms.cross_path.mode=random,all_prefix",
         f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted(sweep.rglob("run-*.wandb"))
    assert len(files) == 2
    names, groups = [], set()
    for path in files:
        records = wandb_records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        names.append(run.display_name)
        groups.add(run.run_group)
        metrics = {(r.metric.glob_name or r.metric.name): r.metric.step_metric
                   for r in records if r.WhichOneof("record_type") == "metric"}
        assert metrics.get("curves/*") == "teacher_blocks_loaded"
        steps = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
                 for r in records if r.WhichOneof("record_type") == "history"]
        curve = [h for h in steps if "teacher_blocks_loaded" in h]
        assert [int(h["teacher_blocks_loaded"]) for h in curve] == [0, 1, 2, 3, 4]
        assert all("curves/prefix" in h for h in curve)
    assert sorted(names) == ["distill-resnet_narrow[loss.terms.cross_path.mode=all_prefix]",
                             "distill-resnet_narrow[loss.terms.cross_path.mode=random]"]
    assert groups == {str(sweep)}
