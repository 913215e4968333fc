import copy
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from pwl.masks import masks_for_order
from pwl.precision import dequantise, estimated_bytes, quantise, stored_spec
from pwl.runtime import ProgressiveModel, load_bundle_hybrid, teacher_block_file, write_bundle
from tests.conftest import BUNDLE_DATA_CFG, export_tiny, model_cfg, tiny_hybrid


def wide_cfg():
    """resnet_narrow with a wide teacher, so conv kernels dominate its bytes."""
    cfg = model_cfg("resnet_narrow")
    cfg["teacher"]["widths"] = [32, 64, 128, 128]
    return cfg


def by_hand_rule(name, t):
    # The tensors a bundle stores below fp32: conv/linear weights with >= 1024 elements.
    return t.is_floating_point() and t.dim() >= 2 and name.endswith("weight") and t.numel() >= 1024


def reference(hybrid, convert):
    """A copy of ``hybrid`` whose teacher weights picked by ``by_hand_rule`` went through
    ``convert`` (quantise and dequantise, or a cast and back)."""
    ref = copy.deepcopy(hybrid)
    with torch.no_grad():
        for name, p in ref.teacher.named_parameters():
            if by_hand_rule(name, p):
                p.copy_(convert(p.detach().clone()))
    return ref


def int8_round_trip(w):
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                        qscheme=torch.per_channel_symmetric)
    observer(w)
    scales, zero_points = observer.calculate_qparams()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(w, scales.double(), zero_points, 0,
                                          torch.qint8).dequantize()


def teacher_bytes(bundle):
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    return sum(e["bytes"] for rel, e in files.items() if rel.startswith("teacher/"))


def test_quantise_by_hand():
    w = torch.zeros(2, 512)
    w[0, 0], w[0, 1] = 127.5, 3.4      # row scale 127.5 / 127.5 = 1: 3.4 -> 3
    w[1, 0], w[1, 1] = -2.55, 0.062    # row scale 2.55 / 127.5 = 0.02: 0.062 / 0.02 = 3.1 -> 3
    bias, small = torch.randn(512), torch.randn(4, 4)
    count = torch.tensor(7)
    stored = quantise({"fc.weight": w, "fc.bias": bias, "tiny.weight": small,
                       "bn.num_batches_tracked": count}, "int8")
    assert stored["fc.weight"].dtype == torch.int8
    assert stored["fc.weight"][:, :2].tolist() == [[127, 3], [-128, 3]]
    assert stored["fc.weight.__scale"].tolist() == pytest.approx([1.0, 0.02])
    assert stored["fc.bias"] is bias and stored["tiny.weight"] is small
    assert stored["bn.num_batches_tracked"] is count
    back = dequantise(stored, "int8")
    assert set(back) == {"fc.weight", "fc.bias", "tiny.weight", "bn.num_batches_tracked"}
    assert back["fc.weight"][0, :2].tolist() == [127.0, 3.0]
    assert back["fc.weight"][1, :2].tolist() == pytest.approx([-2.56, 0.06])
    expected = {}
    for name, t in {"fc.weight": w, "fc.bias": bias, "tiny.weight": small}.items():
        expected.update(stored_spec(name, t.to("meta"), "int8"))
    assert expected == {"fc.weight": ((2, 512), torch.int8),
                        "fc.weight.__scale": ((2,), torch.float32),
                        "fc.bias": ((512,), torch.float32),
                        "tiny.weight": ((4, 4), torch.float32)}


def test_int8_bundle_is_small_and_loads_as_dequantise_then_forward(tmp_path):
    hybrid, fp32 = export_tiny(tmp_path / "fp32", wide_cfg())
    torch.manual_seed(0)
    same, int8 = export_tiny(tmp_path / "int8", wide_cfg(), dtype="int8", stages=None)
    assert all(torch.equal(a, b) for a, b in zip(hybrid.state_dict().values(),
                                                 same.state_dict().values()))
    assert teacher_bytes(int8) <= 0.3 * teacher_bytes(fp32)
    manifest = json.loads((int8 / "manifest.json").read_text())
    assert manifest["files"]["teacher/block_1.safetensors"]["dtype"] == "int8"
    assert manifest["files"]["student.safetensors"]["dtype"] == "fp32"
    with safe_open(str(int8 / teacher_block_file(1)), "pt") as f:
        assert f.get_tensor("blocks.1.0.conv1.weight").dtype == torch.int8
        assert f.get_tensor("blocks.1.0.conv1.weight.__scale").shape == (64,)
        assert f.get_tensor("blocks.1.0.bn1.weight").dtype == torch.float32

    ref = reference(hybrid, int8_round_trip)
    loaded, _ = load_bundle_hybrid(int8)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for mask in masks_for_order("all", 4):
            assert torch.equal(loaded(x, mask), ref(x, mask)), mask
        assert not torch.equal(ref(x, "TTTT"), hybrid(x, "TTTT"))
    with ProgressiveModel.open(int8) as model:
        model.start_loading()
        model.wait(30)
        assert torch.equal(model.predict(x), ref(x, "TTTT"))


@pytest.mark.parametrize("dtype, cast", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_bundles_equal_a_cast_then_forward(tmp_path, dtype, cast):
    hybrid, bundle = export_tiny(tmp_path / dtype, dtype=dtype, stages=None)
    ref = reference(hybrid, lambda w: w.to(cast).float())
    loaded, _ = load_bundle_hybrid(bundle)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for mask in ("TTTT", "TSTS", "STTS"):
            assert torch.equal(loaded(x, mask), ref(x, mask)), mask


def test_stage_accuracies_are_remeasured_with_the_stored_weights(tmp_path):
    from pwl.export import measure_stage_records

    hybrid, cfg = tiny_hybrid()
    records = measure_stage_records(hybrid, "int8", ["SSSS", "TSSS", "TTTT"], BUNDLE_DATA_CFG,
                                    None, "test")
    bundle = tmp_path / "int8"
    write_bundle(hybrid, cfg, bundle, dtype="int8", stages=records, data_cfg=BUNDLE_DATA_CFG)
    stages = json.loads((bundle / "manifest.json").read_text())["stages"]
    assert [(r["mask"], r["split"], r["precision"]) for r in stages] == [
        ("SSSS", "test", "int8"), ("TSSS", "test", "int8"), ("TTTT", "test", "int8")]
    # Accuracy of the loaded int8 bundle on the synthetic test split, counted here.
    from pwl.data.registry import build_datamodule

    dm = build_datamodule(BUNDLE_DATA_CFG)
    loaded, _ = load_bundle_hybrid(bundle)
    for row in stages:
        correct = total = 0
        with torch.no_grad():
            for images, labels in dm.test_dataloader():
                logits = loaded(dm.preprocess(images, train=False), row["mask"])
                correct += int((logits.argmax(1) == labels).sum())
                total += len(labels)
        assert total == 128
        assert row["accuracy"] == correct / total



def test_estimated_bytes_by_hand():
    tensors = {"fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(512)}
    # fp32: (1024 + 512) x 4; fp16: 1024 x 2 + 512 x 4; int8: 1024 x 1 + 2 scales x 4 + 512 x 4
    assert estimated_bytes(tensors, "fp32") == 6144
    assert estimated_bytes(tensors, "fp16") == 4096
    assert estimated_bytes(tensors, "int8") == 3080
