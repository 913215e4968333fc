import csv
import itertools
import json
import random

import pytest

from pwl.errors import ConfigError
from pwl.masks import LoadingOrder, masks_for_order
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
    return max(area(list(p), accuracy, block_bytes)
               for p in itertools.permutations(range(n)))


def test_hand_made_table_best_order_is_not_prefix():
    # area = sum over steps of (accuracy held) x (bytes of the block arriving):
    #   prefix 0,1,2: SSS*4 + TSS*1 + TTS*1 = 2.0 + 0.5 + 0.7 = 3.2
    #   0,2,1:        SSS*4 + TSS*1 + TST*1 = 2.0 + 0.5 + 0.6 = 3.1
    #   1,0,2:        SSS*1 + STS*4 + TTS*1 = 0.5 + 2.8 + 0.7 = 4.0
    #   1,2,0:        SSS*1 + STS*1 + STT*4 = 0.5 + 0.7 + 3.2 = 4.4   <- best
    #   2,0,1:        SSS*1 + SST*4 + TST*1 = 0.5 + 2.4 + 0.6 = 3.5
    #   2,1,0 suffix: SSS*1 + SST*1 + STT*4 = 0.5 + 0.6 + 3.2 = 4.3
    plan, best = best_order(HAND, HAND_BYTES)
    assert plan == LoadingOrder("plan", ("SSS", "STS", "STT", "TTT"))
    assert best == pytest.approx(4.4)
    assert area("prefix", HAND, HAND_BYTES) == pytest.approx(3.2)
    assert area([2, 1, 0], HAND, HAND_BYTES) == pytest.approx(4.3)
    assert area(["TSS", "TST"], HAND, HAND_BYTES) == pytest.approx(2.5)


def test_plan_is_never_below_prefix():
    rng = random.Random(1)
    for n in range(2, 9):
        for _ in range(5):
            table = random_table(n, rng)
            weights = [rng.randint(1, 1000) for _ in range(n)]
            _, best = best_order(table, weights)
            assert best >= area("prefix", table, weights) - 1e-9


def test_dp_equals_brute_force_over_all_orders():
    rng = random.Random(0)
    for n in range(2, 6):
        for _ in range(20):
            table = random_table(n, rng)
            weights = [rng.randint(1, 50) for _ in range(n)]
            plan, best = best_order(table, weights)
            assert best == pytest.approx(brute_force(table, weights))
            assert area(plan, table, weights) == pytest.approx(best)


def test_flat_table_gives_prefix_and_missing_masks_are_avoided():
    flat = dict.fromkeys(masks_for_order("all", 4), 0.5)
    assert best_order(flat, [1, 1, 1, 1])[0].masks == ("SSSS", "TSSS", "TTSS", "TTTS", "TTTT")
    # Only prefix and suffix measured, suffix better: the plan cannot pass through TSST etc.
    table = {m: 0.5 for m in masks_for_order("prefix", 4)}
    table.update({m: 0.8 for m in masks_for_order("suffix", 4)[1:]})
    plan, best = best_order(table, [1, 1, 1, 1])
    assert plan.masks == ("SSSS", "SSST", "SSTT", "STTT", "TTTT")
    assert best == pytest.approx(0.5 + 3 * 0.8)
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
    plan, _ = best_order(table, [rng.randint(1, 9) for _ in range(n)])
    assert plan.blocks[0] == 7


def test_plan_csv_round_trip(tmp_path):
    plan = LoadingOrder("plan", ("SSS", "STS", "STT", "TTT"))
    rows = plan_rows(plan, HAND, HAND_BYTES)
    assert [(r.order, r.block, r.block_bytes, r.bytes_loaded, r.accuracy) for r in rows] == [
        ("plan", -1, 0, 0, 0.5), ("plan", 1, 1, 1, 0.7), ("plan", 2, 1, 2, 0.8),
        ("plan", 0, 4, 6, 0.9)]
    assert rows[0].mean_accuracy == pytest.approx(4.4 / 6)
    prefix = LoadingOrder.parse("prefix", 3)
    rows += plan_rows(prefix, HAND, HAND_BYTES)
    path = write_plan(rows, tmp_path / "plan.csv")
    assert read_plan(path) == plan
    assert read_plan(path, "prefix") == prefix


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
    # The bundle's teacher files, one per block, as its own listing gives them.
    files = {p.name: p.stat().st_size for p in (bundle / "teacher").iterdir()}
    assert int(costs["TSSS"]["teacher_bytes_bundle"]) == files["block_0.safetensors"]
    assert int(costs["TTTT"]["teacher_bytes_bundle"]) == sum(files.values())
    planned = list(read_plan(out / "plan.csv").masks)
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
