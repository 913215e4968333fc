import csv
import json
from collections import Counter

import pytest
import torch
from torch import nn

from pwl.adapters import Adapters
from pwl.blocks import BlockNet
from pwl.build import build_hybrid
from pwl.data import SyntheticDataModule
from pwl.errors import ConfigError
from pwl.hybrid import HybridNet
from pwl.masks import masks_for_order
from pwl.stages import (
    COLUMNS,
    MaskBytes,
    StageEvaluator,
    evaluate_on_split,
    evaluate_stages,
    mask_costs,
    read_stages,
    student_bytes,
    teacher_block_bytes,
    write_stages,
)
from tests.conftest import model_cfg


@pytest.fixture(scope="module")
def hybrid():
    torch.manual_seed(0)
    hybrid = build_hybrid(model_cfg("resnet_narrow")).eval()
    # Random adapters (and teacher BN statistics) so every switch changes the answer.
    with torch.no_grad():
        for p in hybrid.adapters.parameters():
            p.add_(0.5 * torch.randn_like(p))
        for name, buf in hybrid.teacher.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    return hybrid


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, 16, 16, generator=g) for n in (20, 12)]


def predictions(hybrid, images, mask):
    with torch.no_grad():
        return torch.cat([hybrid(x, mask).argmax(1) for x in images])


def test_every_mask_matches_an_independent_full_forward(hybrid, batches):
    masks = masks_for_order("all", hybrid.num_blocks)
    preds = {m: predictions(hybrid, batches, m) for m in masks}
    assert len({tuple(p.tolist()) for p in preds.values()}) > len(masks) // 2, \
        "the masks should disagree, or accuracy could not tell them apart"
    # Image i is labelled with the answer of mask i % 16, so every mask is right on its own
    # images and its accuracy moves with any change in its answers.
    labels = torch.stack([preds[masks[i % len(masks)]][i] for i in range(len(preds[masks[0]]))])
    sizes = [len(x) for x in batches]
    result = evaluate_stages(hybrid, list(zip(batches, labels.split(sizes))), ["all"])
    assert [r.mask for r in result.rows] == masks
    for r in result.rows:
        expected = (preds[r.mask] == labels).sum().item() / len(labels)
        assert r.accuracy == expected, r.mask
    assert len({r.accuracy for r in result.rows}) > 2
    assert result.samples == sum(sizes) and result.batches == 2


@pytest.mark.parametrize("order", ["prefix", "suffix", "window"])
def test_orders_give_their_masks_and_the_full_forward_accuracy(hybrid, batches, order):
    labels = [torch.randint(0, 10, (len(x),)) for x in batches]
    result = evaluate_stages(hybrid, list(zip(batches, labels)), [order], epoch=3)
    masks = masks_for_order(order, hybrid.num_blocks)
    assert [(r.order, r.mask) for r in result.rows] == [(order, m) for m in masks]
    all_labels = torch.cat(labels)
    for r in result.rows:
        assert r.epoch == 3 and r.k == r.mask.count("T")
        correct = (predictions(hybrid, batches, r.mask) == all_labels).sum().item()
        assert r.accuracy == correct / len(all_labels)


def count_block_runs(hybrid):
    """Counts every block and adapter call with forward hooks, independently of the evaluator."""
    calls = Counter()
    handles = []
    for who, net in (("T", hybrid.teacher), ("S", hybrid.student)):
        for i, block in enumerate(net.blocks):
            handles.append(block.register_forward_hook(
                lambda *_, key=(who, i): calls.update([key])))
    for to, mods in (("T", hybrid.adapters.to_teacher), ("S", hybrid.adapters.to_student)):
        for i, mod in enumerate(mods):
            handles.append(mod.register_forward_hook(
                lambda *_, key=("to_" + to, i): calls.update([key])))
    return calls, handles


@pytest.mark.parametrize("orders,runs,naive", [
    (["prefix"], 14, 5 * 4),  # T, TT, TTT, TTTT + the S tails of SSSS, TSSS, TTSS, TTTS
    (["all"], 2 + 4 + 8 + 16, 16 * 4),
    (["prefix", "suffix"], 14 + 3 + 2 + 1, 8 * 4),  # suffix adds SSST, SSTT(+SST), STTT(+ST..)
])
def test_each_block_runs_once_per_distinct_prefix(hybrid, batches, orders, runs, naive):
    evaluator = StageEvaluator(hybrid, orders)
    prefixes = {m[:i + 1] for m in evaluator.masks for i in range(hybrid.num_blocks)}
    assert len(prefixes) == runs
    calls, handles = count_block_runs(hybrid)
    try:
        for x in batches:
            evaluator.update(x, torch.zeros(len(x), dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    result = evaluator.result()
    assert result.block_runs == runs * len(batches)
    assert result.naive_block_runs == naive * len(batches)
    for i in range(hybrid.num_blocks):
        for who in "TS":
            expected = sum(p[i] == who for p in prefixes if len(p) == i + 1)
            assert calls[(who, i)] == expected * len(batches), (who, i)
            # An adapter runs once per distinct prefix that switches network at block i+1.
            switches = sum(p[i] != who and p[i + 1] == who for p in prefixes if len(p) == i + 2)
            if i < hybrid.num_blocks - 1:
                assert calls[("to_" + who, i)] == switches * len(batches)


def hand_made_hybrid():
    """N=2 on tokens (B, 1, 4), with parameter counts worked out by hand below.

    Teacher unit 0: stem Linear(4, 32) (160) + Linear(32, 32) (1056); unit 1: Linear(32, 32)
    (1056) + head Linear(32, 2) (66). Student unit 0: Linear(4, 8) (40) + Linear(8, 8) (72);
    unit 1: Linear(8, 8) (72) + Linear(8, 2) (18). to_student[0]: Linear(32, 8) (264);
    to_teacher[0]: Linear(8, 32) (288).
    """
    def net(width):
        return BlockNet(nn.Linear(4, width), [nn.Linear(width, width), nn.Linear(width, width)],
                        nn.Sequential(nn.Flatten(), nn.Linear(width, 2)), num_classes=2)

    return HybridNet(net(32), net(8), Adapters([(1, 32)], [(1, 8)])).eval()


def test_costs_of_a_mask_by_hand():
    hybrid = hand_made_hybrid()
    # fp32: 4 bytes a value. fp16 and int8 shrink only the 32x32 weights (1024 values):
    # 2 bytes or 1 byte a value (+ 32 fp32 scales for int8); the rest stays fp32.
    assert teacher_block_bytes(hybrid.teacher) == [4 * 1216, 4 * 1122]
    assert teacher_block_bytes(hybrid.teacher, "fp16") == [4 * 192 + 2 * 1024,
                                                           4 * 98 + 2 * 1024]
    assert teacher_block_bytes(hybrid.teacher, "int8") == [4 * 192 + 1024 + 4 * 32,
                                                           4 * 98 + 1024 + 4 * 32]
    # What is left of the student's files: its blocks and adapters the mask runs.
    assert student_bytes(hybrid, "TS") == 4 * (90 + 264)
    assert student_bytes(hybrid, "ST") == 4 * (112 + 288)
    assert student_bytes(hybrid, "SS") == 4 * 202
    assert student_bytes(hybrid, "TT") == 0
    assert student_bytes(hybrid) == 4 * (202 + 264 + 288)
    assert mask_costs(hybrid, {"TS": 0.5, "TT": 0.75}, bundle_block_bytes=[100, 200]) == [
        MaskBytes("TS", 1, 0.5, 4 * 354, 4 * 1216, 4 * 192 + 2048, 4 * 192 + 1152, 100),
        MaskBytes("TT", 2, 0.75, 0, 4 * 2338, 4 * 290 + 4096, 4 * 290 + 2304, 300)]
    assert mask_costs(hybrid, {"SS": 0.25})[0].teacher_bytes_bundle is None

    images = torch.randn(6, 1, 4)
    result = evaluate_stages(hybrid, [(images, torch.zeros(6, dtype=torch.long))], "all")
    assert [(r.mask, r.teacher_params, r.bytes_loaded) for r in result.rows] == [
        ("SS", 0, 0), ("TS", 1216, 4 * 1216), ("ST", 1122, 4 * 1122), ("TT", 2338, 4 * 2338)]
    assert {r.order for r in result.rows} == {"all"}


def test_prefix_auc_and_scalar_names(hybrid, batches):
    labels = torch.randint(0, 10, (len(batches[0]),))
    data = [(batches[0], labels)]
    result = evaluate_stages(hybrid, data, ["prefix", "window", "TSTS"])
    prefix = [r.accuracy for r in result.rows if r.order == "prefix"]
    assert result.prefix_auc == pytest.approx(sum(prefix) / 5)
    scalars = result.scalars()
    assert scalars["stages/prefix/k2"] == result.accuracy("TTSS")
    assert scalars["stages/window/STTS"] == result.accuracy("STTS")
    assert scalars["stages/custom/TSTS"] == result.accuracy("TSTS")
    assert scalars["stages/prefix_auc"] == result.prefix_auc
    # Prefix masks from another order count too; without all of them there is no AUC.
    assert evaluate_stages(hybrid, data, ["all"]).prefix_auc == pytest.approx(result.prefix_auc)
    suffix_only = evaluate_stages(hybrid, data, ["suffix"])
    assert suffix_only.prefix_auc is None and "stages/prefix_auc" not in suffix_only.scalars()


def test_files_follow_the_contract(hybrid, batches, tmp_path):
    labels = torch.randint(0, 10, (len(batches[0]),))
    data = [(batches[0], labels)]
    results = [evaluate_stages(hybrid, data, ["prefix", "suffix"], epoch=e) for e in (0, 1)]
    paths = write_stages(results, tmp_path, meta={"split": "val"})
    assert paths == {k: tmp_path / f"stages.{k}" for k in ("csv", "json", "png")}

    with paths["csv"].open() as f:
        header = next(csv.reader(f))
    assert header == ["epoch", "order", "k", "mask", "accuracy", "teacher_params",
                      "bytes_loaded", "ms_per_batch"]
    assert tuple(header) == COLUMNS
    rows = read_stages(paths["csv"])
    # One row per (epoch, order, mask): SSSS and TTTT appear under prefix and suffix.
    assert len(rows) == 2 * 10
    assert [(r.epoch, r.order, r.k) for r in rows[:5]] == [(0, "prefix", k) for k in range(5)]
    assert rows == [r for res in results for r in res.rows]

    doc = json.loads(paths["json"].read_text())
    assert doc["columns"] == list(COLUMNS) and doc["split"] == "val"
    assert [tuple(r[c] for c in COLUMNS) for r in doc["rows"]] == \
        [tuple(getattr(r, c) for c in COLUMNS) for r in rows]
    assert [e["epoch"] for e in doc["evaluations"]] == [0, 1]
    assert doc["evaluations"][0]["block_runs"] == results[0].block_runs
    assert doc["evaluations"][0]["naive_block_runs"] == 8 * 4

    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_on_split_takes_a_config_or_a_data_module(hybrid):
    data = {"_target_": "pwl.data.SyntheticDataModule", "num_train": 64, "num_test": 40,
            "val_size": 16, "batch_size": 16, "image_size": 16, "in_chans": 3,
            "num_classes": 10}
    from_cfg = evaluate_on_split(hybrid, data, "test", "prefix", batch_size=8,
                                 limit_batches=3, device="cpu", input_shape=(3, 16, 16))
    assert (from_cfg.samples, from_cfg.batches) == (24, 3)
    dm = SyntheticDataModule(**{k: v for k, v in data.items() if k != "_target_"},
                             eval_batch_size=8)
    from_dm = evaluate_on_split(hybrid, dm, "test", ["prefix"], limit_batches=3)
    assert [r.accuracy for r in from_dm.rows] == [r.accuracy for r in from_cfg.rows]
    assert evaluate_on_split(hybrid, dm, "val", "prefix").samples == 16
    with pytest.raises(ConfigError, match="split='train' is unknown"):
        evaluate_on_split(hybrid, dm, "train", "prefix")
    with pytest.raises(ConfigError, match=r"shape \[3, 16, 16\] but the model expects \[1, "):
        evaluate_on_split(hybrid, dm, "test", "prefix", input_shape=(1, 28, 28))
