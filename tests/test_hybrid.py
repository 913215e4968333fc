import pytest
import torch

from pwl.build import build_hybrid
from pwl.errors import ConfigError, MaskError
from pwl.masks import masks_for_order, teacher_blocks, validate_mask
from tests.conftest import MODEL_CONFIGS, model_cfg


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_mask_runs_and_pure_masks_equal_the_networks(name):
    cfg = model_cfg(name)
    hybrid = build_hybrid(cfg).eval()
    n = hybrid.num_blocks
    x = torch.randn(2, *cfg["input_shape"])
    with torch.no_grad():
        assert torch.equal(hybrid(x, "T" * n), hybrid.teacher(x))
        assert torch.equal(hybrid(x, "S" * n), hybrid.student(x))
        for mask in masks_for_order("all", n):
            assert hybrid(x, mask).shape == (2, 10)


def test_mixed_mask_uses_the_adapter_at_each_switch():
    hybrid = build_hybrid(model_cfg("resnet_narrow")).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        t0 = hybrid.teacher.run_block(0, x)
        s = hybrid.adapters.to_student[0](t0)
        s = hybrid.student.run_block(1, s)
        t = hybrid.adapters.to_teacher[1](s)
        t = hybrid.teacher.run_block(2, t)
        s = hybrid.adapters.to_student[2](t)
        expected = hybrid.student.run_block(3, s)
        assert torch.equal(hybrid(x, "TSTS"), expected)


def test_forward_from_a_cached_feature_matches_forward():
    hybrid = build_hybrid(model_cfg("resnet")).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feats = hybrid.student.forward_intermediates(x)
        for mask in ("SSTT", "SSST", "SSSS"):
            assert torch.allclose(hybrid.forward_from(1, feats[1], mask), hybrid(x, mask))


@pytest.mark.parametrize("mask,pattern", [
    ("TTS", "length 3 but the model has N=4"),
    ("TTSSS", "length 5 but the model has N=4"),
    ("TXSS", r"letters \['X'\]"),
    ("ttss", r"letters \['s', 't'\]"),
])
def test_bad_masks_name_the_problem(mask, pattern):
    hybrid = build_hybrid(model_cfg("resnet"))
    with pytest.raises(MaskError, match=pattern):
        hybrid(torch.randn(1, 3, 16, 16), mask)


def test_teacher_student_block_count_mismatch_names_values():
    cfg = model_cfg("resnet")
    cfg["student"]["depths"] = [1, 1, 1]
    cfg["student"]["widths"] = [16, 32, 64]
    with pytest.raises(ConfigError, match="teacher has N=4 blocks but student has N=3"):
        build_hybrid(cfg)


def test_teacher_stays_frozen_in_train_mode():
    hybrid = build_hybrid(model_cfg("resnet")).train()
    assert not hybrid.teacher.training
    assert hybrid.student.training
    assert not any(p.requires_grad for p in hybrid.teacher.parameters())


def test_loading_orders():
    assert masks_for_order("prefix", 3) == ["SSS", "TSS", "TTS", "TTT"]
    assert masks_for_order("suffix", 3) == ["SSS", "SST", "STT", "TTT"]
    assert masks_for_order("window", 3) == ["SSS", "TSS", "STS", "SST", "TTS", "STT", "TTT"]
    all4 = masks_for_order("all", 4)
    assert len(all4) == 16 == len(set(all4))
    assert [teacher_blocks(m) for m in all4] == sorted(teacher_blocks(m) for m in all4)
    with pytest.raises(MaskError, match="unknown"):
        masks_for_order("middle", 3)
    assert validate_mask("TST", 3) == "TST"
