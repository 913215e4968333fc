import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from pwl.bench import (
    bundle_target,
    link_use,
    measure_target,
    paired_difference,
    paired_ratio,
    run_curve,
)
from pwl.data.registry import build_datamodule
from pwl.masks import masks_for_order
from pwl.runtime import load_bundle_hybrid, read_manifest
from pwl.weights import save_model_cfg, save_weights
from tests.conftest import CONF_DIR, export_tiny, model_cfg, run_module, tiny_hybrid

STAGE_HEADER = "epoch,order,k,mask,accuracy,teacher_params,bytes_loaded,ms_per_batch\n"


def fake_distill_run(run):
    """A distill run directory as pwl.train writes it, with two epochs of stage accuracies."""
    hybrid, cfg = tiny_hybrid()
    save_weights(hybrid, run / "hybrid.safetensors")
    save_model_cfg(cfg, run)
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"seed": 0, "data": OmegaConf.load(
        f"{CONF_DIR}/data/synthetic.yaml")}), run / ".hydra" / "config.yaml")
    lines = [f"{epoch},prefix,{k},{m},{0.1 * k + epoch / 100},0,0,1.0\n"
             for epoch in (0, 1) for k, m in enumerate(masks_for_order("prefix", 4))]
    (run / "stages.csv").write_text(STAGE_HEADER + "".join(lines))
    return hybrid


@pytest.mark.parametrize("as_ckpt", [False, True])
def test_export_cli_writes_a_verified_bundle_with_stages_and_data(tmp_path, as_ckpt):
    run = tmp_path / "run"
    run.mkdir()
    hybrid = fake_distill_run(run)
    checkpoint = run
    if as_ckpt:  # a Lightning checkpoint inside the run: stages and data are found beside it
        checkpoint = run / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir()
        torch.save({"state_dict": {f"hybrid.{k}": v for k, v in hybrid.state_dict().items()},
                    "hyper_parameters": {"model_cfg": model_cfg("resnet_narrow")}}, checkpoint)
        (run / "hybrid.safetensors").unlink()
    proc = run_module("pwl.export", f"checkpoint={checkpoint}", f"out={tmp_path / 'bundle'}")
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout
    manifest = read_manifest(tmp_path / "bundle")
    prefix, suffix = masks_for_order("prefix", 4), masks_for_order("suffix", 4)
    assert [r.mask for r in manifest.stages] == list(dict.fromkeys(prefix + suffix))
    assert {(r.split, r.precision) for r in manifest.stages} == {("test", "fp32")}
    assert manifest.data["_target_"] == "pwl.data.SyntheticDataModule"
    assert manifest.data["image_size"] == 16
    loaded, _ = load_bundle_hybrid(tmp_path / "bundle")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, "TTSS"), hybrid(x, "TTSS"))
    # the recorded accuracy of TTSS, counted here on the run's test split
    dm = build_datamodule(manifest.data)
    correct = total = 0
    with torch.no_grad():
        for images, labels in dm.test_dataloader():
            correct += int((hybrid(dm.preprocess(images, train=False), "TTSS").argmax(1)
                            == labels).sum())
            total += len(labels)
    assert manifest.stage_accuracy("TTSS") == correct / total


def test_export_cli_reports_a_missing_checkpoint_in_one_line(tmp_path):
    proc = run_module("pwl.export", f"checkpoint={tmp_path / 'nope'}", f"out={tmp_path / 'b'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "nope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_serve_cli_answers_through_every_stage_and_writes_the_timeline(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    out = tmp_path / "serve"
    bandwidth = sum(p.stat().st_size for p in (bundle / "teacher").iterdir())
    proc = run_module("pwl.serve", f"bundle={bundle}", f"hydra.run.dir={out}",
                   f"bandwidth={bandwidth}", "batch_size=32", "tail_batches=2", "live=false")
    assert proc.returncode == 0, proc.stderr
    with open(out / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    prefix = masks_for_order("prefix", 4)
    masks = [r["mask"] for r in rows]
    assert masks[-1] == "TTTT" and masks.count("TTTT") >= 2
    assert [prefix.index(m) for m in masks] == sorted(prefix.index(m) for m in masks)
    assert all(int(r["stage"]) == r["mask"].count("T") for r in rows)
    assert all(0 <= float(r["running_accuracy"]) <= 1 for r in rows)
    assert [int(r["answers"]) for r in rows] == [32 * (i + 1) for i in range(len(rows))]
    events = json.loads((out / "events.json").read_text())
    assert [e["mask"] for e in events] == prefix
    assert (out / "timeline.png").stat().st_size > 0
    curve = json.loads((out / "curve.json").read_text())
    # the tiny bundle's manifest has no accuracy for TTSS, so no curve, but every swap's flips
    assert "'TTSS'" in curve["error"]
    assert len(curve["flips"]) == 4 and all(0 <= f <= 1 for f in curve["flips"])


def test_serve_cli_needs_a_data_config(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle", data_cfg=None)
    proc = run_module("pwl.serve", f"bundle={bundle}", f"hydra.run.dir={tmp_path / 'serve'}")
    assert proc.returncode == 2
    assert "data=" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_paired_ratio_pairs_runs_of_one_round_and_bounds_its_median():
    # The machine slows down over the rounds; each round's pair slows alike.
    base = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    times = [1.1 * b for b in base]
    ratio, low, high = paired_ratio(times, base)
    assert ratio == pytest.approx(1.1) and low == pytest.approx(1.1) and high == pytest.approx(1.1)
    # the ratio of the medians over rounds would be the same here; a paired outlier is not
    noisy = [1.1 * b for b in base[:-1]] + [base[-1] * 3.0]
    ratio, low, high = paired_ratio(noisy, base)
    assert ratio == pytest.approx(1.1)
    assert low <= ratio <= high <= 3.0
    spread = [b * r for b, r in zip(base, (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3))]
    ratio, low, high = paired_ratio(spread, base)
    assert ratio == pytest.approx(1.15) and 1.0 <= low < ratio < high <= 1.3
    assert paired_ratio([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]) == (2.0, 2.0, 2.0)
    ratio, low, high = paired_ratio([2.0, 3.0], [1.0, 1.0])
    assert ratio == 2.5 and math.isnan(low) and math.isnan(high)


def test_paired_difference_subtracts_runs_of_one_round():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert paired_difference([b + 0.01 for b in base], base) == pytest.approx((0.01,) * 3)
    delta, low, high = paired_difference([1.01, 2.02, 3.03, 4.0, 5.1], base)
    assert delta == pytest.approx(0.02) and low <= 0.02 <= high <= 0.1
    delta, low, high = paired_difference([2.0, 3.0], [1.0, 1.0])
    assert delta == 1.5 and math.isnan(low) and math.isnan(high)


def test_link_use_and_the_load_curve_of_a_bench_run():
    # student at 0.5 s (first answer 0.6 s), loading from 1 s, 3 MB in 2 blocks by 4 s
    run = {"first_answer_s": 0.6, "loading_started_s": 1.0,
           "events": [[0.5, "SS"], [2.0, "TS"], [4.0, "TT"]],
           "event_bytes": [100, 1_000_000, 2_000_000]}
    assert link_use(run, 1e6) == pytest.approx(3e6 / (3.0 * 1e6))
    assert link_use(run, None) is None
    curve = run_curve(run, {"SS": 0.5, "TS": 0.6, "TT": 0.8}, window_s=5.0)
    # 0 until 0.6 s, 0.5 to 2 s, 0.6 to 4 s, 0.8 to 5 s
    assert curve.mean_accuracy_window == pytest.approx((0.5 * 1.4 + 0.6 * 2 + 0.8 * 1) / 5)
    assert curve.time_to_teacher_s == 4.0
    # counted from the first answer: the same stages 0.6 s earlier, over the same window
    curve = run_curve(run, {"SS": 0.5, "TS": 0.6, "TT": 0.8}, window_s=5.0, from_answer=True)
    assert curve.mean_accuracy_window == pytest.approx((0.5 * 1.4 + 0.6 * 2 + 0.8 * 1.6) / 5)
    assert run_curve(run, {"SS": 0.5, "TT": 0.8}, window_s=5.0) is None  # no TS accuracy
    assert run_curve({"first_answer_s": 0.1}, {"SS": 0.5}, None) is None  # no load


def test_bench_measures_the_four_variants(tmp_path):
    hybrid, bundle = export_tiny(tmp_path / "bundle")
    target = bundle_target(bundle, tmp_path / "whole")
    rows = measure_target(target, bandwidth=None, cold=False, full=True)
    assert [r["variant"] for r in rows] == ["teacher_safetensors", "teacher_ckpt",
                                            "student_safetensors", "bundle"]
    by_variant = {r["variant"]: r for r in rows}
    for r in rows:
        for key in ("bytes_ratio", "first_answer_s", "first_answer_ratio", "student_ratio",
                    "peak_ratio", "full_answer_s"):
            assert r[key] > 0, (r["variant"], key)
        # the student alone: the bundle's first answer; the others: the teacher's answer
        assert r["same_logits"], r["variant"]
    assert rows[0]["first_answer_ratio"] == rows[0]["bytes_ratio"] == 1.0
    assert by_variant["student_safetensors"]["student_ratio"] == 1.0
    # one round: no interval
    assert all(math.isnan(r["student_ratio_low"]) for r in rows)
    manifest = read_manifest(bundle)
    teacher_bytes = target.teacher_file.stat().st_size
    assert by_variant["bundle"]["bytes_ratio"] == (
        manifest.files["student.safetensors"].bytes / teacher_bytes)
    # the student alone's file holds the student's tensors and nothing else
    assert safetensors_keys(target.student_file) == set(hybrid.student.state_dict())


def test_bench_alternates_the_variants_within_each_round(tmp_path, monkeypatch):
    import pwl.bench

    _, bundle = export_tiny(tmp_path / "bundle")
    target = bundle_target(bundle, tmp_path / "whole")
    order = []

    def recorded(spec):  # the order is under test here, not the measurement
        order.append(spec["variant"])
        return {"first_answer_s": 1.0, "peak_bytes": 1, "full_answer_s": 1.0,
                "full_peak_bytes": 1, "logits": "x", "full_logits": "x"}

    monkeypatch.setattr(pwl.bench, "run_variant", recorded)
    rows = measure_target(target, bandwidth=None, cold=False, full=False, repeats=2)
    # machine drift over a target's minutes then hits every variant alike
    assert order == [*target.variants, *target.variants]
    assert [r["variant"] for r in rows] == target.variants


def safetensors_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def test_bench_names_a_workdir_it_cannot_create_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    workdir = tmp_path / "a_file" / "work"
    _, bundle = export_tiny(tmp_path / "bundle")
    result = run_module("pwl.bench", f"bundle={bundle}", "random_pair=false",
                        f"workdir={workdir}", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: workdir={workdir} cannot be created (Not a directory); pass a writable "
        "directory or workdir=null"]
