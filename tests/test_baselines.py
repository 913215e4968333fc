"""The baselines that decide whether PWL is worth it: post-hoc adapters on a finished student."""

import pytest
import torch

from pwl.checkpoint import load_hybrid
from pwl.errors import ConfigError
from pwl.train import train
from tests.conftest import tiny_train_cfg


def test_posthoc_trains_only_the_adapters_of_a_frozen_finished_student(tmp_path):
    train(tiny_train_cfg(tmp_path / "teacher", "phase=teacher", "test=false"))
    short = ["phase=distill", f"teacher={tmp_path / 'teacher'}", "test=false",
             "trainer.limit_train_batches=3", "callbacks=none"]
    train(tiny_train_cfg(tmp_path / "kd", *short, "loss=kd"))
    train(tiny_train_cfg(tmp_path / "posthoc", *short, "loss=posthoc",
                         f"student_from={tmp_path / 'kd'}"))
    kd, _ = load_hybrid(tmp_path / "kd")
    posthoc, _ = load_hybrid(tmp_path / "posthoc")
    # the student, BatchNorm statistics included, is the KD run's bit for bit
    before, after = kd.student.state_dict(), posthoc.student.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [k for k, v in posthoc.adapters.state_dict().items()
             if not torch.equal(v, kd.adapters.state_dict()[k])]
    assert any("to_student" in k for k in moved) and any("to_teacher" in k for k in moved)


def test_posthoc_without_a_student_says_what_to_pass(tmp_path):
    cfg = tiny_train_cfg(tmp_path, "phase=distill", f"teacher={tmp_path}", "loss=posthoc")
    with pytest.raises(ConfigError, match="student_from=<distill run directory>"):
        train(cfg)


def test_early_exit_trains_heads_on_a_frozen_teacher_and_writes_accuracy_per_byte(tmp_path):
    import csv

    from pwl.config import to_dict
    from pwl.stages.costs import teacher_block_bytes
    from pwl.weights import load_teacher

    train(tiny_train_cfg(tmp_path / "teacher", "phase=teacher", "test=false"))
    train(tiny_train_cfg(tmp_path / "exits", "phase=early_exit",
                         f"teacher={tmp_path / 'teacher'}", "trainer.limit_train_batches=3"))
    with (tmp_path / "exits" / "exits_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k"]) for r in rows] == [1, 2, 3, 4]
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    # exit k needs teacher blocks 0..k-1 and its own head; k = N is the whole teacher
    cfg = tiny_train_cfg(tmp_path, "phase=teacher").model
    blocks = teacher_block_bytes(load_teacher(tmp_path / "teacher", to_dict(cfg)["teacher"]))
    for r in rows:
        k = int(r["k"])
        assert int(r["bytes_loaded"]) == sum(blocks[:k]) + int(r["head_bytes"])
    assert int(rows[-1]["head_bytes"]) == 0
    assert (tmp_path / "exits" / "exits.safetensors").is_file()


def test_area_per_byte_of_a_step_curve_by_hand():
    from pwl.lit.early_exit import area_per_byte

    # 0.5 from 10 to 30 bytes, 1.0 from 30 to 40, nothing before 10: (0.5*20 + 1.0*10) / 40
    assert area_per_byte([(30, 1.0), (10, 0.5)], 40) == 0.5
