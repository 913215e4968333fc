import csv
import json

import pytest
import torch
from omegaconf import OmegaConf

from pwl.bench import bundle_target, measure_target
from pwl.bench_worker import VARIANTS
from pwl.export import read_stage_rows
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
    assert [(r["mask"], r["accuracy"]) for r in manifest["stages"]] == [
        (m, 0.1 * k + 0.01) for k, m in enumerate(masks_for_order("prefix", 4))]
    assert manifest["data"]["_target_"] == "pwl.data.SyntheticDataModule"
    assert manifest["data"]["image_size"] == 16
    loaded, _ = load_bundle_hybrid(tmp_path / "bundle")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, "TTSS"), hybrid(x, "TTSS"))


def test_export_cli_reports_a_missing_checkpoint_in_one_line(tmp_path):
    proc = run_module("pwl.export", f"checkpoint={tmp_path / 'nope'}", f"out={tmp_path / 'b'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "nope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_stage_rows_of_the_last_epoch(tmp_path):
    path = tmp_path / "stages.csv"
    path.write_text(STAGE_HEADER + "0,prefix,0,SS,0.5,0,0,1\n1,prefix,0,SS,0.6,0,0,1\n"
                    "1,prefix,2,TT,0.9,0,0,1\n1,suffix,2,TT,0.9,0,0,1\n")
    assert read_stage_rows(path) == [{"mask": "SS", "k": 0, "accuracy": 0.6},
                                     {"mask": "TT", "k": 2, "accuracy": 0.9}]


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


def test_serve_cli_needs_a_data_config(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle", data_cfg=None)
    proc = run_module("pwl.serve", f"bundle={bundle}", f"hydra.run.dir={tmp_path / 'serve'}")
    assert proc.returncode == 2
    assert "data=" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_measures_the_three_variants(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    target = bundle_target(bundle, tmp_path / "whole")
    rows = measure_target(target, bandwidth=None, cold=False, full=True)
    assert [r["variant"] for r in rows] == list(VARIANTS)
    for r in rows:
        for key in ("bytes_ratio", "first_answer_s", "first_answer_ratio", "peak_ratio",
                    "full_answer_s"):
            assert r[key] > 0, (r["variant"], key)
        assert r["same_logits"], r["variant"]
    assert rows[0]["first_answer_ratio"] == rows[0]["bytes_ratio"] == 1.0
    manifest = read_manifest(bundle)
    assert rows[2]["bytes_ratio"] == (manifest["files"]["student.safetensors"]["bytes"]
                                      / target.teacher_file.stat().st_size)
