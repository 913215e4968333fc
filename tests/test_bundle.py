import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from pwl.checkpoint import load_hybrid
from pwl.errors import CheckpointError
from pwl.masks import masks_for_order
from pwl.models import register
from pwl.models.resnet import ResNetArgs, resnet
from pwl.runtime import (
    ProgressiveModel,
    load_bundle_hybrid,
    teacher_block_file,
    verify,
    write_bundle,
)
from tests.conftest import BUNDLE_DATA_CFG, export_tiny, flip_byte, model_cfg, tiny_hybrid, truncate


def test_round_trip_gives_every_mask_of_the_original(tmp_path):
    hybrid, bundle = export_tiny(tmp_path / "bundle")
    loaded, cfg = load_bundle_hybrid(bundle)
    via_checkpoint, _ = load_hybrid(bundle)
    assert cfg == model_cfg("resnet_narrow")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, "TTTT"), hybrid.teacher(x))
        assert torch.equal(loaded(x, "SSSS"), hybrid.student(x))
        for mask in masks_for_order("all", 4):
            expected = hybrid(x, mask)
            assert torch.equal(loaded(x, mask), expected), mask
            assert torch.equal(via_checkpoint(x, mask), expected), mask


def test_manifest_and_files_follow_the_layout(tmp_path):
    hybrid, bundle = export_tiny(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["num_blocks"] == 4
    assert manifest["loading_order"] == ["SSSS", "TSSS", "TTSS", "TTTS", "TTTT"]
    assert manifest["model"] == model_cfg("resnet_narrow")
    assert manifest["data"] == BUNDLE_DATA_CFG
    assert manifest["stages"][1] == {"mask": "TSSS", "k": 1, "accuracy": 0.6}
    assert manifest["params"]["teacher"] == sum(p.numel() for p in hybrid.teacher.parameters())
    assert manifest["params"]["student"] == sum(p.numel() for p in hybrid.student.parameters())
    assert set(manifest["files"]) == {"student.safetensors", "adapters.safetensors",
                                      *(teacher_block_file(i) for i in range(4))}
    for rel, entry in manifest["files"].items():
        data = (bundle / rel).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "dtype": "fp32"}
    teacher_keys = set(hybrid.teacher.state_dict())
    seen = set()
    for i in range(4):
        with safe_open(str(bundle / teacher_block_file(i)), "pt") as f:
            keys = set(f.keys())
        assert all(k.startswith(tuple(hybrid.teacher.unit_prefixes(i))) for k in keys)
        seen |= keys
    assert seen == teacher_keys
    with safe_open(str(bundle / "teacher/block_0.safetensors"), "pt") as f:
        assert any(k.startswith("stem.") for k in f.keys())
    with safe_open(str(bundle / "teacher/block_3.safetensors"), "pt") as f:
        assert any(k.startswith("head.") for k in f.keys())
    # The first answer reads the student file alone; the adapters have their own.
    with safe_open(str(bundle / "student.safetensors"), "pt") as f:
        assert set(f.keys()) == {f"student.{k}" for k in hybrid.student.state_dict()}
    with safe_open(str(bundle / "adapters.safetensors"), "pt") as f:
        assert set(f.keys()) == {f"adapters.{k}" for k in hybrid.adapters.state_dict()}


def test_a_bundle_of_another_format_is_refused_in_one_line(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format_version 1; this pwl reads format 2, "
                                              "re-export") as caught:
        ProgressiveModel.open(bundle)
    assert "\n" not in str(caught.value)


def test_verify_names_a_corrupt_file(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    assert verify(bundle).num_blocks == 4
    flip_byte(bundle / "teacher/block_2.safetensors")
    with pytest.raises(CheckpointError, match="block_2.safetensors.*sha256"):
        verify(bundle)


def _flip_student(bundle):
    flip_byte(bundle / "student.safetensors")


def _truncate_student(bundle):
    truncate(bundle / "student.safetensors")


def _remove_block_1(bundle):
    (bundle / "teacher/block_1.safetensors").unlink()


def _truncate_block_3(bundle):
    truncate(bundle / "teacher/block_3.safetensors")


def _extra_block(bundle):
    (bundle / "teacher/block_4.safetensors").write_bytes(
        (bundle / "teacher/block_3.safetensors").read_bytes())


def _manifest_n(n):
    def edit(bundle):
        path = bundle / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["num_blocks"] = n
        path.write_text(json.dumps(manifest))
    return edit


@pytest.mark.parametrize("damage, named", [
    (_flip_student, "student.safetensors.*sha256"),
    (_truncate_student, "student.safetensors.*bytes"),
    (_remove_block_1, "block_1.safetensors.*missing"),
    (_truncate_block_3, "block_3.safetensors.*bytes"),
    (_extra_block, "block_4.safetensors.*N=4"),
    (_manifest_n(5), "block_4.safetensors.*N=5"),
    (_manifest_n(3), "block_3.safetensors.*N=3"),
])
def test_a_manifest_not_matching_its_files_is_refused_at_open(tmp_path, damage, named):
    _, bundle = export_tiny(tmp_path / "bundle")
    damage(bundle)
    with pytest.raises(CheckpointError, match=named):
        ProgressiveModel.open(bundle)
    with pytest.raises(CheckpointError, match=named):
        load_bundle_hybrid(bundle)


def test_not_a_bundle_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json does not exist"):
        ProgressiveModel.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json is not readable JSON"):
        verify(tmp_path)


def test_export_replaces_a_bundle_but_not_a_foreign_directory(tmp_path):
    _, bundle = export_tiny(tmp_path / "bundle")
    hybrid, again = export_tiny(bundle, stages=None)
    assert json.loads((again / "manifest.json").read_text())["stages"] == []
    verify(again)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a bundle"):
        write_bundle(hybrid, model_cfg("resnet_narrow"), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


class _Scale(nn.Module):
    """Multiplies by a non-persistent buffer, which a state dict does not carry."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x):
        return x * self.scale


def resnet_with_buffer(**kwargs):
    net = resnet(**kwargs)
    net.blocks[1] = nn.Sequential(net.blocks[1], _Scale())
    return net


def meta_unsafe_resnet(**kwargs):
    torch.linspace(0, 1, 3).tolist()  # reads tensor values: impossible on the meta device
    return resnet(**kwargs)


# A bundle may only name registered builders; these two take resnet's arguments.
register(ResNetArgs)(resnet_with_buffer)
register(ResNetArgs)(meta_unsafe_resnet)


def _with_target(target):
    cfg = model_cfg("resnet_narrow")
    cfg["teacher"]["_target_"] = cfg["student"]["_target_"] = target
    return cfg


def test_non_persistent_buffers_travel_in_the_files(tmp_path):
    hybrid, cfg = tiny_hybrid(_with_target("tests.test_bundle.resnet_with_buffer"))
    hybrid.teacher.blocks[1][1].scale.fill_(3.0)
    bundle = tmp_path / "bundle"
    write_bundle(hybrid, cfg, bundle)
    loaded, _ = load_bundle_hybrid(bundle)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for mask in ("TTTT", "TTSS", "SSSS"):
            assert torch.equal(loaded(x, mask), hybrid(x, mask))


def test_a_model_that_cannot_be_built_on_meta_still_loads(tmp_path):
    hybrid, bundle = export_tiny(tmp_path / "bundle",
                                 _with_target("tests.test_bundle.meta_unsafe_resnet"))
    with pytest.warns(UserWarning, match="meta device"):
        model = ProgressiveModel.open(bundle)
    assert all(p.is_meta for p in model.hybrid.teacher.parameters())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.predict(x), hybrid.student(x))
