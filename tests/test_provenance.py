"""experiments/results: every directory says what made it, and every quoted number is its own."""

import csv
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DIRS = sorted(p for p in RESULTS.iterdir() if p.is_dir())
KEYS = {"command", "commit", "dirty", "cpu_model", "cores", "torch", "precision",
        "memory_format", "steps", "written"}


@pytest.mark.parametrize("results", DIRS, ids=lambda p: p.name)
def test_every_results_directory_has_its_provenance(results):
    record = json.loads((results / "provenance.json").read_text())
    assert KEYS <= set(record)
    for step in record["steps"]:
        assert step["seconds"] is None or step["seconds"] >= 0
    if record.get("backfilled"):  # a tool that was not there knows none of it
        assert [record[k] for k in ("command", "commit", "cpu_model", "torch")] == [None] * 4
        assert record["steps"] == []
    else:
        assert record["command"].startswith(("python ", "make "))
        assert isinstance(record["dirty"], bool) and record["cores"] >= 1


def test_a_skipped_step_carries_a_time_only_with_the_command_that_ran():
    # A resumed run keeps what its earlier invocation measured (the ledger stores the time
    # and the command together); a time without its command came from nowhere.
    for path in [*RESULTS.glob("*/reproduce.json"), *RESULTS.glob("*/plans.json")]:
        steps = json.loads(path.read_text())["steps"]
        bad = [s["step"] for s in steps
               if s.get("skipped") and s["seconds"] is not None and not s.get("command")]
        assert bad == [], path


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", text, flags=re.M))


def commands(text: str) -> list[str]:
    """Commands quoted in Markdown (inline code and bash blocks) that a reader may run."""
    found = re.findall(r"`((?:python|make) [^`]+)`", text)
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        found += [line.strip() for line in block.replace("\\\n", " ").splitlines()
                  if line.strip().startswith(("python ", "make "))]
    return found


def names_something_real(command: str) -> bool:
    words = command.split()
    if words[0] == "make":
        goals = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        return all(goal in make_targets() for goal in goals)
    if words[1] == "-m":
        module = words[2]
        return module.startswith("pwl.") and (ROOT / (module.replace(".", "/") + ".py")).is_file()
    return (ROOT / words[1]).is_file()


@pytest.mark.parametrize("readme", sorted(RESULTS.glob("**/README.md")),
                         ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_command_in_a_results_readme_names_something_that_exists(readme):
    missing = [c for c in commands(readme.read_text()) if not names_something_real(c)]
    assert missing == []


def test_every_number_in_the_readme_results_tables_is_in_the_file_it_links():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    checked = 0
    # each table follows the link to its results directory, with no other link between
    for link, table in re.findall(r"\(experiments/results/([^/)]+)/README\.md\)"
                                  r"(?:(?!\(experiments/results/).)*?\n\n"
                                  r"((?:\|[^\n]*\n)+)", section, flags=re.S):
        source = (RESULTS / link / "report.md").read_text()
        for row in table.splitlines()[2:]:
            for cell in row.strip("|").split("|")[1:]:
                cell = cell.strip()
                if re.search(r"\d", cell):
                    assert cell in source, (link, cell)
                    checked += 1
    assert checked >= 30  # three families' tables


def test_strip_unmeasured_nulls_times_of_skipped_steps_only(tmp_path):
    provenance = load_script("provenance")
    (tmp_path / "reproduce.json").write_text(json.dumps({"steps": [
        {"step": "teacher", "command": "c", "seconds": 600.0, "skipped": True},
        {"step": "export", "command": "e", "seconds": 6.5, "skipped": False}],
        "wall_seconds": 606.5}))
    (tmp_path / "README.md").write_text("| teacher | 10.0 | `c` |\n| export | 0.1 | `e` |\n"
                                        "| **total** | **10.1** | |")
    assert provenance.strip_unmeasured(tmp_path) == ["teacher"]
    summary = json.loads((tmp_path / "reproduce.json").read_text())
    assert [s["seconds"] for s in summary["steps"]] == [None, 6.5]
    assert summary["wall_seconds"] == 6.5
    assert (tmp_path / "README.md").read_text().splitlines()[:2] == [
        "| teacher |  | `c` |", "| export | 0.1 | `e` |"]


def test_run_records_the_command_its_time_and_its_output_only_when_it_succeeds(tmp_path):
    provenance = load_script("provenance")
    out = tmp_path / "results"
    command = ["python", "-c", "import time; time.sleep(0.2); print('measured')"]
    assert provenance.run_and_record(out, command) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"] == shlex.join(command)
    (step,) = record["steps"]
    assert step["seconds"] >= 0.2 and (out / "console.txt").read_text() == "measured\n"
    failed = tmp_path / "failed"
    assert provenance.run_and_record(failed, ["python", "-c", "raise SystemExit(3)"]) == 3
    assert not (failed / "provenance.json").exists()


def test_choices_picks_the_widest_candidate_far_enough_from_the_teacher(tmp_path, monkeypatch):
    choices = load_script("choices")

    def run(name: str, values: list[float], student: str) -> Path:
        path = tmp_path / name
        (path / "csv").mkdir(parents=True)
        (path / ".hydra").mkdir()
        rows = "".join(f"{epoch},,\n{epoch},{v},\n" for epoch, v in enumerate(values))
        (path / "csv" / "metrics.csv").write_text("epoch,val/bpc,train/loss\n" + rows)
        (path / ".hydra" / "overrides.yaml").write_text(f"- phase=teacher\n- {student}\n")
        return path

    teacher = run("teacher", [3.0, 2.2, 2.3], "model.student.embed_dim=64")
    wide = run("wide", [2.6, 2.4], "model.student.embed_dim=96")  # 0.2 above: too close
    mid = run("mid", [2.9, 2.5], "model.student.embed_dim=64")  # 0.3 above: the pick
    narrow = run("narrow", [3.2, 2.9], "model.student.embed_dim=32")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["choices.py", "--teacher", str(teacher), "--candidates",
                                      str(wide), str(mid), str(narrow), "--gap", "0.25",
                                      "--out", str(out)])
    choices.main()
    rows = (out / "choices.csv").read_text().splitlines()
    assert [r.split(",")[-1] for r in rows[1:]] == ["False", "True", "False"]
    assert [r.split(",")[3] for r in rows[1:]] == ["2.4", "2.5", "2.9"]
    assert f"Chosen: `{mid}`." in (out / "README.md").read_text()
    assert json.loads((out / "provenance.json").read_text())["steps"][0]["seconds"] is None


def test_orders_compares_prefix_with_the_other_orders_within_each_run(tmp_path, monkeypatch):
    orders = load_script("orders")
    results = tmp_path / "seeds"
    results.mkdir()
    rows = [  # run a (seed 0) and run b (seed 1) of one column, N=3; b has no window order
        ("a", "prefix", "SSS", 0.5), ("a", "prefix", "TSS", 0.8), ("a", "prefix", "TTS", 0.9),
        ("a", "prefix", "TTT", 1.0), ("a", "suffix", "SST", 0.6), ("a", "suffix", "STT", 0.8),
        ("a", "window", "SST", 0.6), ("a", "window", "STS", 0.7), ("a", "window", "TSS", 0.8),
        ("a", "window", "STT", 0.8), ("a", "window", "TTS", 0.9),
        ("b", "prefix", "TSS", 0.7), ("b", "prefix", "TTS", 0.9), ("b", "suffix", "SST", 0.5),
        ("b", "suffix", "STT", 0.7), ("b", "suffix", "TTT", 1.0)]
    (results / "report.csv").write_text(
        "run,path,order,k,mask,accuracy,bytes_loaded\n"
        + "".join(f"vgg/pwl,{p},{o},{m.count('T')},{m},{v},0\n" for p, o, m, v in rows))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["orders.py", str(results), "--out", str(out)])
    orders.main()
    with (out / "orders.csv").open() as f:
        got = {r["what"]: r for r in csv.DictReader(f)}
    # prefix: a (0.8 + 0.9) / 2 = 0.85, b 0.8; suffix: a 0.7, b 0.6; window: a 3.8 / 5 = 0.76
    assert float(got["prefix"]["mean"]) == pytest.approx(0.825)
    assert float(got["window"]["mean"]) == pytest.approx(0.76) and got["window"]["n"] == "1"
    # prefix - suffix per run: 0.15 and 0.2; sd 0.0354, t(0.975, 1) = 12.706 -> half 0.3177
    diff = got["prefix - suffix"]
    assert (diff["n"], float(diff["mean"])) == ("2", pytest.approx(0.175))
    assert float(diff["ci95_low"]) == pytest.approx(0.175 - 12.7062 * 0.025, abs=1e-4)
    assert float(got["prefix - window"]["mean"]) == pytest.approx(0.09)
    assert "| vgg/pwl | prefix - suffix | 2 | +17.50 [-14.27, +49.27] |" in (
        out / "README.md").read_text()
