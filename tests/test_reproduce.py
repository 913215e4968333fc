"""experiments/reproduce.py: the quality bars, and a whole tiny run that resumes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY, export_tiny, load_script

ROOT = Path(__file__).resolve().parents[1]
reproduce = load_script("reproduce")


def stages(prefix: list[float]) -> dict[tuple[str, str], float]:
    n = len(prefix) - 1
    return {("prefix", "T" * k + "S" * (n - k)): acc for k, acc in enumerate(prefix)}


BARS = {"teacher_min": 0.92, "gap_min": 0.02, "student_vs_kd_max": 0.01,
        "prefix_drop_max": 0.005}


def failed(pwl_prefix: list[float], kd_student: float) -> list[str]:
    kd = stages([kd_student] + [0.1] * (len(pwl_prefix) - 1))
    results = reproduce.checks(stages(pwl_prefix), kd, len(pwl_prefix) - 1, BARS)
    return [c["check"] for c in results if not c["ok"]]


def test_the_bars_come_from_the_experiment_config():
    assert reproduce.experiment_checks("fmnist_resnet_narrow", []) == BARS
    assert reproduce.experiment_checks("fmnist_resnet_narrow", ["checks=null"]) == {}
    only = reproduce.checks(stages([0.8, 0.9]), None, 1, {"gap_min": 0.2})
    assert [(c["check"], c["ok"]) for c in only] == [("teacher - student >= 20 points", False)]


def test_checks_pass_a_good_curve():
    assert failed([0.875, 0.881, 0.890, 0.894, 0.923], kd_student=0.872) == []


@pytest.mark.parametrize("prefix,kd_student,bar", [
    ([0.875, 0.881, 0.890, 0.894, 0.919], 0.872, "teacher >= 92%"),
    ([0.910, 0.915, 0.918, 0.920, 0.925], 0.905, "teacher - student >= 2 points"),
    ([0.875, 0.881, 0.890, 0.894, 0.923], 0.890, "within 1 point of the KD baseline"),
    ([0.875, 0.881, 0.874, 0.894, 0.923], 0.872, "no drop > 0.5 points"),
])
def test_checks_name_the_missed_bar(prefix, kd_student, bar):
    missed = failed(prefix, kd_student)
    assert len(missed) == 1 and bar in missed[0]


def test_portable_command_drops_the_interpreter_and_the_clone_path():
    cmd = [sys.executable, "-m", "pwl.train", f"teacher={ROOT / 'runs' / 't'}", "a b"]
    assert reproduce.portable(cmd) == "python -m pwl.train teacher=runs/t 'a b'"


@pytest.mark.slow
def test_reproduce_runs_every_step_then_resumes(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    cmd = [sys.executable, "experiments/reproduce.py", "--runs", str(runs), "--results",
           str(results), "--seeds", "0", "--losses", "pwl", "kd", "--early-exit", "--", *TINY,
           "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
           "trainer.limit_test_batches=1"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]

    summary = json.loads((results / "reproduce.json").read_text())
    names = [s["step"] for s in summary["steps"]]
    per_run = ["distill {}", "evaluate {} (val)", "evaluate {} (test)"]
    assert names == ["teacher",
                     *[s.format(f"{loss} seed 0") for loss in ("pwl", "kd") for s in per_run],
                     "early exit seed 0", "export", "report"]
    per_byte = (results / "per_byte.csv").read_text().splitlines()
    assert per_byte[0] == "seed,pwl_area,early_exit_area,total_bytes" and len(per_byte) == 2
    assert "Accuracy per byte against the teacher's early exits" in (results / "README.md"
                                                                     ).read_text()
    assert not any(s["skipped"] for s in summary["steps"])
    assert [c["check"] for c in summary["checks"]][0] == "teacher >= 92%"
    assert (runs / "bundle" / "manifest.json").is_file()
    readme = (results / "README.md").read_text()
    assert "`python -m pwl.train phase=teacher experiment=fmnist_resnet_narrow" in readme
    assert "--paired=pwl,kd" in readme
    assert "Paired difference: resnet_narrow/pwl - resnet_narrow/kd" in readme
    assert sys.executable not in readme
    assert "| student |" in readme and "| teacher |" in readme
    printed = [line.strip() for line in first.stdout.splitlines()]
    assert len([p for p in printed if p.startswith(("[ok]", "[FAIL]"))]) == len(summary["checks"])
    # the tracked record is compared with, never rewritten
    assert printed[-1].startswith("verdict: ")
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["command"].startswith("python experiments/reproduce.py --runs ")
    assert provenance["torch"] and provenance["cores"] and provenance["cpu_model"]
    assert provenance["memory_format"] == "channels_last"
    assert [s["step"] for s in provenance["steps"]] == names
    assert all(isinstance(s["seconds"], float) for s in provenance["steps"])

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads((results / "reproduce.json").read_text())
    trained = [s for s in again["steps"] if s["step"] != "report"]
    assert all(s["skipped"] for s in trained)
    # a skipped step keeps what the run that made it measured, and its command
    assert ([(s["seconds"], s["command"]) for s in trained]
            == [(s["seconds"], s["command"]) for s in summary["steps"][:-1]])
    # and its provenance says this run measured nothing of it
    provenance = json.loads((results / "provenance.json").read_text())
    assert [s["seconds"] for s in provenance["steps"][:-1]] == [None] * len(trained)


def test_a_resumed_run_keeps_the_times_of_steps_an_interrupted_one_finished(tmp_path):
    ledger, done = tmp_path / "runs" / "steps.json", tmp_path / "out.txt"
    touch = [sys.executable, "-c", f"open({str(done)!r}, 'w').close()"]
    reproduce.step("teacher", touch, done, [], False, ledger)
    recorded = json.loads(ledger.read_text())["teacher"]
    assert recorded["command"] == reproduce.portable(touch)
    # what shared the machine is recorded with the time
    assert recorded["threads"] == torch.get_num_threads() and len(recorded["load"]) == 3

    # The interrupted invocation wrote no reproduce.json: the next one reads the ledger.
    log: list[dict] = []
    reproduce.step("teacher", [*touch, "today's overrides"], done, log, False, ledger)
    assert log == [{"step": "teacher", "command": reproduce.portable(touch),
                    "seconds": recorded["seconds"], "threads": recorded["threads"],
                    "load": recorded["load"], "skipped": True}]

    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(SystemExit, match="exit code 3"):
        reproduce.step("distill", failing, tmp_path / "never", [], False, ledger)
    assert set(json.loads(ledger.read_text())) == {"teacher"}


def test_an_in_process_step_writes_what_its_command_line_writes(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    overrides = [f"checkpoint={bundle}", "split=test", "orders=[prefix,suffix]"]
    here, log = tmp_path / "here", []
    cmd = [sys.executable, "-m", "pwl.evaluate", *overrides, f"hydra.run.dir={here}"]
    reproduce.step("evaluate", cmd, here / "stages.csv", log, False, tmp_path / "steps.json",
                   in_process=True)
    assert log[0]["command"] == reproduce.portable(cmd) and not log[0]["skipped"]
    rows = reproduce.read_stages(here / "stages.csv")
    assert [(r.order, r.mask) for r in rows] == [
        ("prefix", "SSSS"), ("prefix", "TSSS"), ("prefix", "TTSS"), ("prefix", "TTTS"),
        ("prefix", "TTTT"), ("suffix", "SSSS"), ("suffix", "SSST"), ("suffix", "SSTT"),
        ("suffix", "STTT"), ("suffix", "TTTT")]
    # What Hydra writes into a run dir from the command line, and the report names runs by:
    # the task's overrides, and the composed config with out unset.
    assert yaml.safe_load((here / ".hydra" / "overrides.yaml").read_text()) == overrides
    config = yaml.safe_load((here / ".hydra" / "config.yaml").read_text())
    assert (config["checkpoint"], config["split"], config["orders"], config["out"]) == (
        str(bundle), "test", ["prefix", "suffix"], None)


def test_an_in_process_step_that_fails_says_why_in_one_line(tmp_path, capsys):
    missing, ledger = tmp_path / "missing", tmp_path / "steps.json"
    cmd = [sys.executable, "-m", "pwl.evaluate", f"checkpoint={missing}",
           f"hydra.run.dir={tmp_path / 'out'}"]
    with pytest.raises(SystemExit, match="exit code 2"):
        reproduce.step("evaluate", cmd, tmp_path / "out" / "stages.csv", [], False, ledger,
                       in_process=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: checkpoint={missing} does not exist; pass a distill run directory, "
                   "a Lightning .ckpt or a bundle directory"]
    assert not ledger.exists()


def test_the_comparison_with_the_record_shows_bits_per_character_unscaled(tmp_path):
    from pwl.stages.metrics import BPC

    header = "column,order,stage,n,mean,std,ci95_low,ci95_high\n"
    (tmp_path / "mine.csv").write_text(header + "gpt/pwl,prefix,student,1,3.2,nan,nan,nan\n"
                                       "gpt/pwl,prefix,teacher,1,2.4,nan,nan,nan\n")
    (tmp_path / "record.csv").write_text(header + "gpt/pwl,prefix,student,3,3.18,0.01,3.17,3.19\n"
                                         "gpt/pwl,prefix,teacher,1,2.39,nan,nan,nan\n")
    lines = reproduce.compare_with_record(tmp_path / "mine.csv", tmp_path / "record.csv",
                                          BPC).splitlines()
    assert "bits per character" in lines[1]
    assert lines[3].split() == ["gpt/pwl", "student", "3.200", "3.180", "[3.170,", "3.190]",
                                "<-", "outside"]
    assert lines[4].split() == ["gpt/pwl", "teacher", "2.400", "2.390", "[2.370,", "2.410]"]
    assert lines[-1] == "verdict: 1 of 2 stages fall outside the record"
