"""A two-process DDP distillation on CPU (gloo), through the command line."""

import json
from pathlib import Path

import pytest

from pwl.train import train
from tests.conftest import TINY, run_module, tiny_train_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_distill_ranks_agree(tmp_path):
    teacher = tmp_path / "teacher"
    train(tiny_train_cfg(teacher, "phase=teacher", "test=false"))
    reports = tmp_path / "ranks"
    result = run_module(
        "pwl.train", "phase=distill", f"teacher={teacher}", *TINY, "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.limit_train_batches=3",
        "callbacks.stage_eval.orders=[prefix,window]",
        "+callbacks.rank_report._target_=tests.rank_report.RankReport",
        f"+callbacks.rank_report.out_dir={reports}", f"hydra.run.dir={tmp_path / 'distill'}",
        cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = json.loads((reports / "rank0.json").read_text())
    rank1 = json.loads((reports / "rank1.json").read_text())
    assert rank0["stages"] and rank0["stages_test"]
    assert rank0 == rank1
    # Reduced over both processes: each rank saw half the split, the result counts all of it.
    assert rank0["samples"]["stages"][0] == 128 and rank0["samples"]["stages_test"][0] == 256
    assert (tmp_path / "distill" / "stages.csv").is_file()
