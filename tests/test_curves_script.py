"""experiments/curves.py: a bundle's teacher at each dtype, loaded in each order, scored."""

import importlib.util
import sys
from pathlib import Path

import pytest

from pwl.bench import bundle_target
from pwl.masks import masks_for_order
from pwl.runtime import read_manifest
from pwl.stages.curves import mean_accuracy
from tests.conftest import export_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curves():
    spec = importlib.util.spec_from_file_location("curves", ROOT / "experiments" / "curves.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "curves", module)  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
        yield module


def test_curves_score_each_dtype_and_order(curves, tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle", plan=["SSST", "TSST", "TTST", "TTTT"])
    target = bundle_target(bundle, tmp_path / "whole")
    orders = curves.orders_of(read_manifest(bundle), ["bundle", "prefix", "plan"])
    # the bundle's order is prefix: measured once under both names
    assert orders == {"bundle=prefix": masks_for_order("prefix", 4),
                      "plan": ["SSSS", "SSST", "TSST", "TTST", "TTTT"]}
    variants = curves.variants(bundle, ["fp32", "int8"], orders, "test", tmp_path / "curves")
    assert [v.dtype for v in variants] == ["fp32", "int8"]
    assert variants[1].teacher_bytes < 0.5 * variants[0].teacher_bytes
    for v in variants:  # every mask of both orders, in the variant's own manifest
        assert set(v.accuracy) == set(orders["bundle=prefix"]) | set(orders["plan"])
        assert set(v.flips) == {p for o in orders.values() for p in zip(o, o[1:])}
    window = 10.0
    plan = {"plan": orders["plan"]}  # one order is enough to check the scoring; loads are slow
    rows, found = curves.measure(target.model_cfg, variants, plan, window, None, None)
    assert [(r["dtype"], r["order"]) for r in rows] == [("fp32", "plan"), ("int8", "plan")]
    assert rows[0]["area_ratio"] == 1.0
    for r in rows:
        curve = found[f"{r['dtype']} {r['order']}"]
        assert [m for _, m, _ in curve.stages] == plan[r["order"]]
        assert r["mean_accuracy_window"] == pytest.approx(mean_accuracy(curve.stages, window))
