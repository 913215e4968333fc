"""Killed runs: real subprocesses killed with SIGKILL, then resumed or checked for torn files.

Lightning writes ``checkpoints/last.ckpt`` at the end of each epoch, so a run
killed in the middle of an epoch resumes from the end of the previous one and
repeats the part of the epoch it lost.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from pwl.checkpoint import load_hybrid
from pwl.runtime import verify
from tests.conftest import TINY, run_module

pytestmark = pytest.mark.slow

# Small enough for seconds per epoch on one CPU, slow enough (batch 16) to be killed mid-epoch.
FAST = [*TINY, "data.batch_size=16", "test=false", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher run directory shared by the distillations below."""
    root = tmp_path_factory.mktemp("resume")
    run = root / "teacher"
    done = run_module("pwl.train", *FAST, "phase=teacher", f"run_dir={run}", cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def _distill_args(run, teacher, epochs, *extra):
    return ["pwl.train", *FAST, "phase=distill", f"teacher={teacher}",
            f"epochs.distill={epochs}", f"run_dir={run}", *extra]


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, timeout=120):
    began = time.monotonic()
    while not condition():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() - began < timeout, "timed out waiting for the run"
        time.sleep(0.02)


def _epochs_in(path):
    with open(path, newline="") as f:
        return sorted({int(row["epoch"]) for row in csv.DictReader(f)})


def _rows_without_timing(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "ms_per_batch"}
                for row in csv.DictReader(f)]


def test_a_distillation_killed_mid_epoch_resumes_from_last_ckpt(tmp_path, teacher):
    run = tmp_path / "distill"
    last = run / "checkpoints" / "last.ckpt"
    # Four times the data of the other runs (120 batches an epoch): epoch 1 is still
    # running when the kill lands half a second after epoch 0's checkpoint.
    longer = "data.num_train=2048"
    proc = _start(_distill_args(run, teacher, 3, longer), tmp_path)
    _wait_for(last.is_file, proc)
    # Epoch 0 ended (its checkpoint exists); a moment later epoch 1 is under way.
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "hybrid.safetensors").exists()
    assert _epochs_in(run / "stages.csv") == [0]  # killed before epoch 1 ended

    resumed = run_module(*_distill_args(run, teacher, 3, longer, f"ckpt_path={last}"),
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _epochs_in(run / "stages.csv") == [0, 1, 2]
    hybrid, _ = load_hybrid(run)
    assert hybrid.num_blocks == 4


def test_a_run_killed_at_an_epoch_boundary_resumes_to_the_same_stages(tmp_path, teacher):
    whole = tmp_path / "whole"
    done = run_module(*_distill_args(whole, teacher, 2), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    # Pausing the run at the moment epoch 0's checkpoint lands, then killing it, is a kill
    # at the boundary: nothing of epoch 1 has been computed.
    proc = _start(_distill_args(run, teacher, 2), tmp_path)
    _wait_for(last.is_file, proc)
    os.kill(proc.pid, signal.SIGSTOP)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = run_module(*_distill_args(run, teacher, 2, f"ckpt_path={last}"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rows_without_timing(run / "stages.csv") == _rows_without_timing(
        whole / "stages.csv")


EXPORT_LOOP = """
import sys, torch
from pwl.build import build_hybrid
from pwl.runtime import write_bundle
cfg = {"name": "t", "adapter": "linear", "input_shape": [3, 16, 16],
       "teacher": {"_target_": "pwl.models.resnet", "depths": [2, 2], "widths": [64, 128],
                   "num_classes": 3},
       "student": {"_target_": "pwl.models.resnet", "depths": [1, 1], "widths": [8, 16],
                   "num_classes": 3}}
hybrid = build_hybrid(cfg).eval()
print("ready", flush=True)
while True:
    write_bundle(hybrid, cfg, sys.argv[1])
"""


def test_an_export_killed_at_any_moment_leaves_a_whole_bundle_or_none(tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-c", EXPORT_LOOP, str(out)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # a few exports in: the kill lands at any point of one
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if out.exists():
        assert verify(out).num_blocks == 2
    # Leftover staging folders are hidden siblings; the next export clears them.
    from tests.test_security import tiny_bundle

    tiny_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
