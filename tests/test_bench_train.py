"""experiments/bench_train.py at its tiniest: its floor times the mixed paths its step ran,
its variants train the same model, and its comparisons pair the variants of one round."""

import importlib.util
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


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    return bench.main(["--pairs", "default", "--modes", "random", "all_prefix",
                       "--batch", "4", "--rounds", "1", "--steps", str(STEPS), "--eval",
                       "--eval-pairs", "default", "--out", str(out)])


def test_the_floor_times_the_masks_the_step_ran(run):
    random_row, prefix_row = run["train"]
    # Each timed step is seeded, so its one random mask is known; the naive variant
    # is seeded alike and must run the same paths, as must the floor.
    expected = []
    for step in range(STEPS):
        torch.manual_seed(bench.step_seed(0, 0, step, STEPS))
        expected.append([random_mixed_mask(4)])
    assert random_row.step_masks == random_row.naive_masks == random_row.floor_masks == expected
    prefix = [["TSSS", "TTSS", "TTTS"]] * STEPS
    assert prefix_row.step_masks == prefix_row.naive_masks == prefix_row.floor_masks == prefix
    assert prefix_row.masks_per_step == 3


def test_the_evaluation_counts_the_blocks_each_variant_runs(run):
    row = run["eval"][0]
    # N=4, all 16 masks: the shared prefixes are the trie's 2 + 4 + 8 + 16 nodes, while
    # one forward per mask runs 16 x 4 blocks.
    assert (row.masks, row.block_runs, row.naive_block_runs) == (16, 30, 64)


def test_the_median_interval_of_three_ratios_spans_them():
    # Resampling 3 ratios, the median is the lowest one with probability 7/27 (two or three
    # draws of it), so the 2.5th and 97.5th percentiles are the extremes.
    assert bench.median_interval([1.1, 0.9, 1.0]) == (1.0, 0.9, 1.1)
    assert bench.median_interval([0.5] * 4) == (0.5, 0.5, 0.5)


class FixedVariant:
    """A lever variant whose steps take a fixed time: fp32 2 s, bf16 1 s, channels_last
    1.5 s, both 0.8 s, torch's mse under both 1 s; the teacher step half of that."""

    SECONDS = {"fp32": 2.0, "bf16": 1.0, "channels_last": 1.5, "channels_last+bf16": 0.8,
               "channels_last+bf16+torch_mse": 1.0}

    def __init__(self, cfg, lever, seed):
        self.seconds = self.SECONDS[lever]

    def teacher_step(self, x, y):
        return self.seconds / 2

    def distill_step(self, x, y):
        return self.seconds


def test_each_comparison_is_the_ratio_of_its_two_variants(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "LeverVariant", FixedVariant)
    rows = bench.main(["--pairs", "default", "--batch", "2", "--rounds", "3", "--levers-only",
                       "--out", str(tmp_path)])["levers"]
    got = {(r.step, r.lever, r.base): (r.ratio, r.ratio_low, r.ratio_high) for r in rows}
    for step in ("teacher", "distill"):
        assert got[step, "channels_last", "fp32"] == (0.75, 0.75, 0.75)
        assert got[step, "bf16", "fp32"] == (0.5, 0.5, 0.5)
        assert got[step, "channels_last+bf16", "fp32"] == (0.4, 0.4, 0.4)
        assert got[step, "channels_last+bf16", "bf16"] == (0.8, 0.8, 0.8)
        assert got[step, "channels_last+bf16", "channels_last+bf16+torch_mse"] == (0.8,) * 3
    assert [r.rounds for r in rows] == [3] * len(rows)
    assert (tmp_path / "levers.csv").read_text().splitlines()[0].startswith(
        "pair,mode,step,lever,base,batch,rounds,lever_ms,base_ms,ratio,ratio_low,ratio_high")


def test_the_training_table_under_switches_runs_them(tmp_path, monkeypatch):
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
    assert (tmp_path / "train_channels_last+bf16.csv").is_file()
    assert not (tmp_path / "train.csv").exists()


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
    _, count = bench.adapter_conversions(hybrid, x, ["feature_sync", "feature_recon"])
    # 3 learnable boundaries x outputs to_S(t), to_T(s) (sync), to_T(to_S(t)), to_S(to_T(sg(s)))
    # (reconstruction), which take 6 conversions
    assert count == 3 * 4 and len(calls) == 3 * 6
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
