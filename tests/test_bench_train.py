"""experiments/bench_train.py at its tiniest: the tables it writes, and that its floor
times the same mixed paths as the step it is compared with."""

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pwl.masks import random_mixed_mask

ROOT = Path(__file__).resolve().parents[1]
# A script, not a module of the package: loaded from its path.
_spec = importlib.util.spec_from_file_location("bench_train",
                                               ROOT / "experiments" / "bench_train.py")
bench = importlib.util.module_from_spec(_spec)
# Registered before it runs (the importlib recipe for a source file): its dataclasses look
# their module up while they are created.
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

STEPS = 2
TRAIN_COLUMNS = ["pair", "mode", "switches", "num_blocks", "batch", "timed_steps", "masks_per_step",
                 "step_ms", "naive_ms", "baseline_ms", "floor_ms", "teacher_ms", "student_ms",
                 "suffixes_ms", "adapters_ms", "images_per_s", "overhead", "step_over_floor",
                 "step_over_floor_adapters", "floor_over_baseline", "naive_speedup"]
EVAL_COLUMNS = ["pair", "num_blocks", "masks", "batch", "timed_batches", "shared_ms",
                "naive_ms", "shared_images_per_s", "naive_images_per_s", "speedup",
                "block_runs", "naive_block_runs"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    results = bench.main(["--pairs", "default", "--modes", "random", "all_prefix",
                          "--batch", "4", "--rounds", "1", "--steps", str(STEPS), "--eval",
                          "--eval-pairs", "default", "--out", str(out)])
    return results, out


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def assert_positive_numbers(row: dict[str, str], columns: list[str]) -> None:
    for col in columns:
        value = float(row[col])
        assert math.isfinite(value) and value > 0, (col, value)


def test_the_training_table_has_a_row_per_mode_with_positive_numbers(run):
    results, out = run
    assert [(r.pair, r.mode) for r in results["train"]] == [("default", "random"),
                                                            ("default", "all_prefix")]
    columns, rows = read_csv(out / "train.csv")
    assert columns == TRAIN_COLUMNS
    assert [(r["pair"], r["mode"], r["num_blocks"], r["timed_steps"]) for r in rows] == [
        ("default", "random", "4", str(STEPS)), ("default", "all_prefix", "4", str(STEPS))]
    assert {r["switches"] for r in rows} == {"fp32"}
    for row in rows:
        assert_positive_numbers(row, TRAIN_COLUMNS[3:])
    for r in results["train"]:
        # the overhead splits into the step's distance to its floor and the floor's own
        assert r.floor_over_baseline == pytest.approx(r.floor_ms / r.baseline_ms)
        assert r.overhead == pytest.approx(r.step_over_floor * r.floor_over_baseline)
        assert r.step_over_floor_adapters == pytest.approx(
            r.step_ms / (r.floor_ms + r.adapters_ms))
    saved = json.loads((out / "train.json").read_text())
    assert saved["meta"]["batch"] == 4
    assert [r["mode"] for r in saved["rows"]] == ["random", "all_prefix"]


def test_the_floor_times_the_masks_the_step_ran(run):
    random_row, prefix_row = run[0]["train"]
    # Each timed step is seeded, so its one random mask is known; the naive variant
    # is seeded alike and must run the same paths, as must the floor.
    expected = []
    for step in range(STEPS):
        torch.manual_seed(bench.step_seed(0, 0, step, STEPS))
        expected.append([random_mixed_mask(4)])
    assert random_row.step_masks == expected
    assert random_row.naive_masks == expected
    assert random_row.floor_masks == expected
    prefix = [["TSSS", "TTSS", "TTTS"]] * STEPS
    assert prefix_row.step_masks == prefix_row.naive_masks == prefix_row.floor_masks == prefix
    assert prefix_row.masks_per_step == 3


def test_the_evaluation_table_counts_the_blocks_each_variant_runs(run):
    results, out = run
    columns, rows = read_csv(out / "eval.csv")
    assert columns == EVAL_COLUMNS
    assert len(rows) == 1 and rows[0]["pair"] == "default"
    assert_positive_numbers(rows[0], EVAL_COLUMNS[1:])
    row = results["eval"][0]
    # N=4, all 16 masks: the shared prefixes are the trie's 2 + 4 + 8 + 16 nodes, while
    # one forward per mask runs 16 x 4 blocks.
    assert (row.masks, row.block_runs, row.naive_block_runs) == (16, 30, 64)


def test_the_levers_table_times_each_switch_against_fp32_of_the_same_rounds(tmp_path):
    results = bench.main(["--pairs", "default", "--modes", "random", "--batch", "4",
                          "--rounds", "1", "--steps", "1", "--levers", "channels_last", "bf16",
                          "--levers-only", "--out", str(tmp_path)])
    assert results["train"] == [] and results["eval"] == []
    rows = results["levers"]
    assert [r.lever for r in rows] == ["fp32", "channels_last", "bf16"]   # fp32 always first
    fp32 = rows[0]
    assert fp32.teacher_vs_fp32 == fp32.distill_vs_fp32 == 1.0
    for r in rows[1:]:
        assert r.teacher_vs_fp32 == pytest.approx(r.teacher_step_ms / fp32.teacher_step_ms)
        assert r.distill_vs_fp32 == pytest.approx(r.distill_step_ms / fp32.distill_step_ms)
    columns, saved = read_csv(tmp_path / "levers.csv")
    assert columns[:3] == ["pair", "mode", "lever"] and len(saved) == 3
    for row in saved:
        assert_positive_numbers(row, columns[3:])


def test_the_training_table_under_switches_runs_them_and_gets_its_own_file(tmp_path,
                                                                           monkeypatch):
    bf16_flags: list[bool] = []
    timed = bench.floor_parts

    def floor_parts(hybrid, *args, **kwargs):
        kernels = [p for p in hybrid.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
        bf16_flags.append(args[3] if len(args) > 3 else kwargs.get("bf16", False))
        return timed(hybrid, *args, **kwargs)

    monkeypatch.setattr(bench, "floor_parts", floor_parts)
    results = bench.main(["--pairs", "default", "--modes", "random", "--batch", "4",
                          "--rounds", "1", "--steps", "1", "--switches", "channels_last+bf16",
                          "--out", str(tmp_path)])
    assert [r.switches for r in results["train"]] == ["channels_last+bf16"]
    assert bf16_flags and all(flag is True for flag in bf16_flags)
    assert not (tmp_path / "train.csv").exists()
    columns, rows = read_csv(tmp_path / "train_channels_last+bf16.csv")
    assert columns == TRAIN_COLUMNS and rows[0]["switches"] == "channels_last+bf16"
    saved = json.loads((tmp_path / "train_channels_last+bf16.json").read_text())
    assert saved["meta"]["reuse_cpu_memory"] is False


def test_a_lever_variant_trains_the_same_model_as_fp32():
    cfg = bench.compose_pair("default", "pwl")
    plain = bench.LeverVariant(cfg, "fp32", seed=0)
    nhwc = bench.LeverVariant(cfg, "channels_last", seed=0)
    for a, b in ((plain.distill, nhwc.distill), (plain.teacher_net, nhwc.teacher_net)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    kernels = [p for p in nhwc.teacher_net.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert nhwc.teacher_net is not nhwc.distill.hybrid.teacher   # its steps leave the frozen one


def test_the_adapter_part_runs_the_feature_terms_conversions_at_learnable_boundaries():
    cfg = bench.compose_pair("default")
    module, _ = bench.distill_module(cfg, "fp32", 0)
    x, _ = bench.random_batch(cfg, 2)
    hybrid = module.hybrid
    calls = []
    convert = hybrid.convert
    hybrid.convert = lambda i, f, to: calls.append((i, to, f.requires_grad)) or convert(i, f, to)
    seconds, count = bench.adapter_conversions(hybrid, x, ["feature_sync", "feature_recon"])
    # 3 learnable boundaries x (to_S(t), to_T(s), to_T(to_S(t)), to_T(sg(s)), to_S(...))
    assert seconds > 0 and count == 3 * 4 and len(calls) == 3 * 5
    assert all(p.grad is not None for p in hybrid.adapters.parameters())
    calls.clear()
    assert bench.adapter_conversions(hybrid, x, ["feature_sync"])[1] == 3 * 2
    assert bench.adapter_conversions(hybrid, x, []) == (0.0, 0)
    assert len(calls) == 3 * 2  # sync alone: to_S(t) and to_T(s); no terms: nothing

    # The reference ResNet pair has equal widths: identities everywhere, nothing to convert.
    same = bench.compose_pair("resnet")
    identities, _ = bench.distill_module(same, "fp32", 0)
    assert bench.adapter_conversions(identities.hybrid, bench.random_batch(same, 2)[0],
                                     ["feature_sync", "feature_recon"]) == (0.0, 0)
