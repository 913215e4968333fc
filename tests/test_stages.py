import csv
import json
from collections import Counter

import pytest
import torch

from pwl.build import build_hybrid
from pwl.errors import ConfigError, MaskError
from pwl.masks import masks_for_order, resolve_masks
from pwl.stages import (
    COLUMNS,
    StageEvaluator,
    evaluate_stages,
    read_stages,
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


def test_resolve_masks_labels_orders_and_rejects_bad_entries():
    pairs = resolve_masks(["prefix", "TSTS", "TTSS"], 4)
    assert pairs[:5] == [("prefix", m) for m in masks_for_order("prefix", 4)]
    assert pairs[5:] == [("custom", "TSTS"), ("custom", "TTSS")]
    assert all(order == "custom" for order, _ in resolve_masks("all", 3))
    assert len(resolve_masks(["prefix", "prefix"], 4)) == 5
    with pytest.raises(MaskError, match="neither a loading order"):
        resolve_masks(["prefx"], 4)
    with pytest.raises(MaskError, match="length 3"):
        resolve_masks(["TTS"], 4)
    with pytest.raises(ConfigError, match="orders is empty"):
        resolve_masks([], 4)


def test_params_and_bytes_count_the_teacher_units_of_the_mask(hybrid, batches):
    labels = torch.zeros(len(batches[0]), dtype=torch.long)
    result = evaluate_stages(hybrid, [(batches[0], labels)], ["prefix", "STSS"])
    rows = {r.mask: r for r in result.rows}
    teacher = hybrid.teacher
    total_bytes = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())
    assert rows["SSSS"].bytes_loaded == 0 and rows["SSSS"].teacher_params == 0
    assert rows["TTTT"].bytes_loaded == total_bytes
    assert rows["TTTT"].teacher_params == sum(p.numel() for p in teacher.parameters())
    block1 = teacher.blocks[1]
    assert rows["STSS"].teacher_params == sum(p.numel() for p in block1.parameters())
    assert rows["STSS"].bytes_loaded == sum(t.numel() * t.element_size()
                                            for t in block1.state_dict().values())
    assert all(r.ms_per_batch >= 0 for r in result.rows)


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
