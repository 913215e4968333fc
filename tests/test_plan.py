import csv
import itertools
import json
import random

import pytest

from pwl.errors import ConfigError
from pwl.masks import loading_masks, masks_for_order
from pwl.runtime import ProgressiveModel
from pwl.stages.plans import area, best_order, plan_rows, read_plan, write_plan
from tests.conftest import BUNDLE_DATA_CFG, compose_cfg, export_tiny

# N=3, block 0 heavy (it carries the stem): bytes 4, 1, 1. Block 0 alone does not help.
HAND_BYTES = [4, 1, 1]
HAND = {"SSS": 0.5, "TSS": 0.5, "STS": 0.7, "SST": 0.6,
        "TTS": 0.7, "TST": 0.6, "STT": 0.8, "TTT": 0.9}


def random_table(n, rng):
    return {m: rng.random() for m in masks_for_order("all", n)}


def brute_force(accuracy, block_bytes):
    n = len(block_bytes)
    return max(area(loading_masks(list(p), n), accuracy, block_bytes)
               for p in itertools.permutations(range(n)))


def test_hand_made_table_best_order_is_not_prefix():
    # area = sum over steps of (accuracy held) x (bytes of the block arriving):
    #   prefix 0,1,2: SSS*4 + TSS*1 + TTS*1 = 2.0 + 0.5 + 0.7 = 3.2
    #   0,2,1:        SSS*4 + TSS*1 + TST*1 = 2.0 + 0.5 + 0.6 = 3.1
    #   1,0,2:        SSS*1 + STS*4 + TTS*1 = 0.5 + 2.8 + 0.7 = 4.0
    #   1,2,0:        SSS*1 + STS*1 + STT*4 = 0.5 + 0.7 + 3.2 = 4.4   <- best
    #   2,0,1:        SSS*1 + SST*4 + TST*1 = 0.5 + 2.4 + 0.6 = 3.5
    #   2,1,0 suffix: SSS*1 + SST*1 + STT*4 = 0.5 + 0.6 + 3.2 = 4.3
    masks, best = best_order(HAND, HAND_BYTES)
    assert masks == ["SSS", "STS", "STT", "TTT"]
    assert best == pytest.approx(4.4)
    assert area(masks_for_order("prefix", 3), HAND, HAND_BYTES) == pytest.approx(3.2)
    assert area(masks_for_order("suffix", 3), HAND, HAND_BYTES) == pytest.approx(4.3)


def test_plan_is_never_below_prefix():
    rng = random.Random(1)
    for n in range(2, 9):
        for _ in range(5):
            table = random_table(n, rng)
            weights = [rng.randint(1, 1000) for _ in range(n)]
            _, best = best_order(table, weights)
            assert best >= area(masks_for_order("prefix", n), table, weights) - 1e-9


def test_dp_equals_brute_force_over_all_orders():
    rng = random.Random(0)
    for n in range(2, 6):
        for _ in range(20):
            table = random_table(n, rng)
            weights = [rng.randint(1, 50) for _ in range(n)]
            masks, best = best_order(table, weights)
            assert best == pytest.approx(brute_force(table, weights))
            assert area(masks, table, weights) == pytest.approx(best)


def test_flat_table_gives_prefix_and_missing_masks_are_avoided():
    flat = dict.fromkeys(masks_for_order("all", 4), 0.5)
    assert best_order(flat, [1, 1, 1, 1])[0] == masks_for_order("prefix", 4)
    # Only prefix and suffix measured, suffix better: the plan cannot pass through TSST etc.
    table = {m: 0.5 for m in masks_for_order("prefix", 4)}
    table.update({m: 0.8 for m in masks_for_order("suffix", 4)[1:]})
    assert best_order(table, [1, 1, 1, 1]) == (masks_for_order("suffix", 4),
                                               pytest.approx(0.5 + 3 * 0.8))
    with pytest.raises(ConfigError, match="orders=\\[all\\]"):
        best_order({"TSS": 0.5}, HAND_BYTES)


def test_dp_scales_to_many_blocks():
    rng = random.Random(2)
    n = 16
    # Accuracy grows with teacher blocks loaded, block 7 helps most.
    table = {}
    for bits in range(1 << n):
        mask = "".join("T" if bits >> i & 1 else "S" for i in range(n))
        table[mask] = mask.count("T") / n + (0.5 if mask[7] == "T" else 0.0)
    masks, best = best_order(table, [rng.randint(1, 9) for _ in range(n)])
    assert masks[1] == "S" * 7 + "T" + "S" * (n - 8)


def test_plan_csv_round_trip(tmp_path):
    rows = plan_rows("plan", ["SSS", "STS", "STT", "TTT"], HAND, HAND_BYTES)
    assert [(r.block, r.bytes_loaded, r.accuracy) for r in rows] == [
        (-1, 0, 0.5), (1, 1, 0.7), (2, 2, 0.8), (0, 6, 0.9)]
    assert rows[0].mean_accuracy == pytest.approx(4.4 / 6)
    rows += plan_rows("prefix", masks_for_order("prefix", 3), HAND, HAND_BYTES)
    path = write_plan(rows, tmp_path / "plan.csv")
    assert read_plan(path) == ["SSS", "STS", "STT", "TTT"]
    assert read_plan(path, "prefix") == masks_for_order("prefix", 3)


def test_plan_entry_point_evaluates_and_export_ships_the_plan(tmp_path):
    from pwl.export import export
    from pwl.plan import plan

    hybrid, bundle = export_tiny(tmp_path / "bundle")
    out = tmp_path / "plan"
    rows = plan(compose_cfg("plan", [f"checkpoint={bundle}", f"out={out}", "device=cpu"]))
    table = json.loads((out / "stages_all_val.json").read_text())
    assert table["split"] == "val" and len({r["mask"] for r in table["rows"]}) == 16
    assert (out / "plan.png").is_file() and (out / "masks_all_val.csv").is_file()
    with (out / "masks_all_val.csv").open() as f:
        costs = {r["mask"]: r for r in csv.DictReader(f)}
    manifest = json.loads((bundle / "manifest.json").read_text())
    teacher_files = sum(e["bytes"] for rel, e in manifest["files"].items()
                        if rel.startswith("teacher/"))
    teacher_fp32 = sum(t.numel() * 4 for t in (*hybrid.teacher.parameters(),
                                                *hybrid.teacher.buffers()) if t.is_floating_point())
    teacher_fp32 += sum(t.numel() * 8 for t in hybrid.teacher.buffers() if not t.is_floating_point())
    assert int(costs["TTTT"]["teacher_bytes_bundle"]) == teacher_files
    assert int(costs["TTTT"]["teacher_bytes_fp32"]) == teacher_fp32
    assert int(costs["TTTT"]["student_bytes"]) == 0 and int(costs["SSSS"]["teacher_bytes_int8"]) == 0
    assert int(costs["SSSS"]["student_bytes"]) == sum(
        t.numel() * t.element_size() for t in (*hybrid.student.parameters(),
                                               *hybrid.student.buffers()))
    assert int(costs["TTTT"]["teacher_bytes_int8"]) < int(costs["TTTT"]["teacher_bytes_fp16"])
    planned = read_plan(out / "plan.csv")
    assert planned == [r.mask for r in rows if r.order == "plan"]
    assert {r.order for r in rows} == {"plan", "prefix", "suffix"}
    by_order = {r.order: r.mean_accuracy for r in rows}
    assert by_order["plan"] >= by_order["prefix"] - 1e-12

    shipped = tmp_path / "planned"
    export(compose_cfg("export", [f"checkpoint={bundle}", f"out={shipped}",
                                  f"loading_order={out / 'plan.csv'}"]))
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest["loading_order"] == planned and manifest["plan"] == planned
    with ProgressiveModel.open(shipped) as model:
        model.start_loading()
        model.wait(30)
        assert [e.mask for e in model.events] == planned
        # All-teacher at the end: every student block and adapter freed.
        assert all(p.is_meta for p in model.hybrid.student.parameters())
        assert all(p.is_meta for p in model.hybrid.adapters.parameters())
    assert manifest["data"] == BUNDLE_DATA_CFG
