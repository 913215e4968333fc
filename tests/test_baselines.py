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
