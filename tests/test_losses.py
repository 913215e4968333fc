import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from pwl.build import build_hybrid
from pwl.errors import ConfigError
from pwl.lit.modules import adapter_lr_mult
from pwl.losses import (
    DISTANCES,
    CrossPath,
    DistillOutputs,
    FeatureRecon,
    FeatureSync,
    LossTerm,
    WeightedSum,
    build_loss,
    get_distance,
    kd_loss,
)
from pwl.losses.distances import cka
from pwl.masks import masks_for_order, random_mixed_mask
from tests.conftest import CONF_DIR, compose_cfg, model_cfg

FIXTURE = Path(__file__).parent / "fixtures" / "losses.json"
# To regenerate after an intended change of the maths:
#   PWL_UPDATE_LOSS_FIXTURE=1 .venv/bin/python -m pytest -q tests/test_losses.py -k fixture
UPDATE_FIXTURE = os.environ.get("PWL_UPDATE_LOSS_FIXTURE") == "1"
PRESETS = sorted(p.stem for p in Path(CONF_DIR, "loss").glob("*.yaml"))


def make_hybrid(name="resnet_narrow", **overrides):
    cfg = model_cfg(name)
    cfg.update(overrides)
    return build_hybrid(cfg).train(), cfg["input_shape"]


def step_outputs(hybrid, input_shape, batch=8):
    """One step's cached features, as the distillation module computes them."""
    images = torch.randn(batch, *input_shape)
    labels = torch.randint(0, 10, (batch,))
    with torch.no_grad():
        teacher_feats = hybrid.teacher.forward_intermediates(images)
    student_feats = hybrid.student.forward_intermediates(images)
    return DistillOutputs(images, labels, hybrid, teacher_feats, student_feats)


def grads(modules):
    return [p.grad for m in modules for p in m.parameters()]


def loss_cfg(name, *overrides):
    """The ``loss`` section of the real conf/train.yaml composed with ``loss=<name>``."""
    return compose_cfg("train", [f"loss={name}", *overrides]).loss


@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (8, 9, 6)], ids=["maps", "tokens"])
@pytest.mark.parametrize("name", DISTANCES.names())
def test_distance_is_a_scalar_zero_for_identical_features(name, shape):
    a = torch.randn(shape)
    value = get_distance(name)(a, a.clone())
    assert value.shape == () and value.abs() < 1e-5


# Two samples of one channel at two positions (B=2, C=1, H=1, W=2):
#   a = [1, 0] and [0, 2], b = [0, 1] and [0, 3]; differences (1, -1) and (0, -1).
# mse 3/4, l1 3/4, smooth_l1 (each |d| <= 1: d^2 / 2) 3/8. Per sample the flattened
# vectors are orthogonal, then parallel: cosine 1/2. Per position (one channel) only the
# last one (2 vs 3) is parallel: cosine_per_position 3/4. Attention maps per sample:
# [1, 0] vs [0, 1] (squared distance 2), [0, 1] vs [0, 1] (0): mean 1. Two centred
# samples are always linearly related: cka 0.
BY_HAND = {"mse": 3 / 4, "l1": 3 / 4, "smooth_l1": 3 / 8, "cosine": 1 / 2,
           "mse_cosine": 3 / 4 + 1 / 2, "cosine_per_position": 3 / 4,
           "mse_cosine_per_position": 3 / 4 + 3 / 4, "attention": 1.0, "cka": 0.0}


@pytest.mark.parametrize("name", DISTANCES.names())
def test_every_distance_by_hand(name):
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 1, 1, 2)
    b = torch.tensor([[0.0, 1.0], [0.0, 3.0]]).view(2, 1, 1, 2)
    assert get_distance(name)(a, b).item() == pytest.approx(BY_HAND[name], abs=1e-6)


@pytest.mark.parametrize("name", DISTANCES.names())
def test_every_distance_is_symmetric(name):
    a, b = torch.randn(8, 4, 5, 5), torch.randn(8, 4, 5, 5)
    distance = get_distance(name)
    torch.testing.assert_close(distance(a, b), distance(b, a))


def test_cka_is_unchanged_by_an_orthogonal_rotation_of_the_features():
    a, c = torch.randn(16, 4, 3, 3), torch.randn(16, 4, 3, 3)
    q, _ = torch.linalg.qr(torch.randn(36, 36))
    rotated = (a.flatten(1) @ q).view_as(a)
    assert F.mse_loss(rotated, a) > 0.1
    assert cka(a, rotated) < 1e-5
    assert torch.allclose(cka(rotated, c), cka(a, c), atol=1e-5)


def test_attention_rejects_features_that_are_not_maps_or_tokens():
    with pytest.raises(ConfigError, match=r"attention.*\(8, 5\)"):
        get_distance("attention")(torch.randn(8, 5), torch.randn(8, 5))


def test_kd_is_the_scaled_kl_divergence_of_the_soft_labels():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    p_t, log_p_s = F.softmax(t / 3, 1), F.log_softmax(s / 3, 1)
    expected = 9 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, 3.0), expected, atol=1e-6)
    assert kd_loss(t, t, 3.0).abs() < 1e-6


@pytest.mark.parametrize("directions,reached,untouched", [
    ("both", ["to_student", "to_teacher"], []),
    ("to_student", ["to_student"], ["to_teacher"]),
    ("to_teacher", ["to_teacher"], ["to_student"]),
])
def test_feature_sync_trains_the_chosen_adapters_and_the_student(directions, reached, untouched):
    hybrid, shape = make_hybrid()
    FeatureSync("mse", directions)(step_outputs(hybrid, shape)).backward()
    for side in reached:
        for adapter in getattr(hybrid.adapters, side):
            assert all(g is not None and g.abs().sum() > 0 for g in grads([adapter]))
    for side in untouched:
        assert all(g is None for g in grads(getattr(hybrid.adapters, side)))
    assert any(g is not None and g.abs().sum() > 0 for g in grads([hybrid.student]))
    assert all(g is None for g in grads([hybrid.teacher]))


@pytest.mark.parametrize("mode,side", [("all_prefix", "to_student"), ("all_suffix", "to_teacher")])
def test_cross_path_trains_the_adapters_at_every_switch(mode, side):
    hybrid, shape = make_hybrid()
    CrossPath(mode, target="both")(step_outputs(hybrid, shape)).backward()
    for adapter in getattr(hybrid.adapters, side):
        assert all(g is not None and g.abs().sum() > 0 for g in grads([adapter]))
    assert any(g is not None and g.abs().sum() > 0 for g in grads([hybrid.student]))
    assert all(g is None for g in grads([hybrid.teacher]))


def test_feature_recon_trains_the_adapters_only():
    hybrid, shape = make_hybrid()
    FeatureRecon("mse")(step_outputs(hybrid, shape)).backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads([hybrid.adapters]))
    assert all(g is None for g in grads([hybrid.student, hybrid.teacher]))


def test_feature_recon_skips_identity_adapters():
    hybrid, shape = make_hybrid("resnet", adapter="identity")
    loss = FeatureRecon("mse")(step_outputs(hybrid, shape))
    assert loss.item() == 0 and not loss.requires_grad


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["resnet_narrow", "vit"])
def test_cached_prefix_mixed_path_equals_the_full_forward(name, train):
    # In train mode BatchNorm normalises with the batch's statistics, which are the same
    # for the same batch whether a block runs in the cached or in the full forward.
    hybrid, shape = make_hybrid(name)
    hybrid.train(train)
    outputs = step_outputs(hybrid, shape)
    with torch.no_grad():
        for mask in masks_for_order("all", hybrid.num_blocks):
            full = hybrid(outputs.images, mask)
            assert torch.allclose(outputs.mixed_logits(mask), full, atol=1e-5), mask


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_and_every_term_is_finite(name):
    cfg = loss_cfg(name)
    assert cfg.name == name
    loss = build_loss(cfg.terms)
    hybrid, shape = make_hybrid()
    total, values = loss(step_outputs(hybrid, shape))
    assert list(values) == list(cfg.terms)
    assert all(torch.isfinite(v) for v in values.values())
    expected = sum(loss.weights[n] * v for n, v in values.items())
    assert torch.allclose(total, expected) and total.requires_grad
    first = next(iter(cfg.terms))
    assert str(loss).startswith(f"loss = {cfg.terms[first].weight}*{first}[")


def test_presets_hold_the_documented_terms():
    pwl, pwl_all = loss_cfg("pwl"), loss_cfg("pwl_all")
    assert list(pwl.terms) == ["ce", "kd", "feature_sync", "feature_recon", "cross_path"]
    assert pwl.terms.cross_path.mode == "random" and pwl_all.terms.cross_path.mode == "all_prefix"
    pwl_all.terms.cross_path.mode = "random"
    assert pwl_all.terms == pwl.terms
    assert list(loss_cfg("kd").terms) == ["ce", "kd"]
    assert list(loss_cfg("ce").terms) == ["ce"]
    # post-hoc adapters: the student is frozen, so only the adapters' terms
    assert list(loss_cfg("posthoc").terms) == ["feature_sync", "feature_recon", "cross_path"]
    assert loss_cfg("posthoc").terms.feature_sync == pwl.terms.feature_sync


@pytest.mark.parametrize("override,formula", [
    ("loss.terms.feature_sync.distance=cka", "cka(s_i, to_S(t_i))"),
    ("loss.terms.cross_path.mode=all_suffix", "m in all_suffix"),
    ("loss.terms.feature_recon.weight=0", "cross_path"),
])
def test_command_line_overrides_reach_the_terms(override, formula):
    loss = build_loss(loss_cfg("pwl", override).terms)
    assert formula in str(loss)
    assert ("feature_recon" in loss.active) == ("feature_recon.weight=0" not in override)


class Exploding(LossTerm):
    def forward(self, outputs):
        raise AssertionError("a term of weight 0 was computed")


def test_weighted_sum_skips_zero_weights_and_prints_its_formula():
    hybrid, shape = make_hybrid()
    loss = build_loss({"ce": {"weight": 0.5},
                       "soft": {"plugin": "kd", "weight": 2, "temperature": 4}})
    loss = WeightedSum({**loss.terms, "off": Exploding()}, {**loss.weights, "off": 0})
    outputs = step_outputs(hybrid, shape)
    total, values = loss(outputs)
    assert list(values) == ["ce", "soft"]
    assert torch.allclose(values["soft"], kd_loss(outputs.student_logits,
                                                  outputs.teacher_logits, 4.0))
    assert torch.allclose(total, 0.5 * values["ce"] + 2 * values["soft"])
    assert str(loss) == "loss = 0.5*ce[CE] + 2.0*soft[KL(T=4)]"


@pytest.mark.parametrize("terms,pattern", [
    ({"nope": {"weight": 1}}, r"loss.terms.nope.plugin='nope' is not a registered loss plugin "
                              r"\(one of \['ce', 'cross_path', 'feature_recon', 'feature_sync', "
                              r"'kd'\]\); a term names its plugin with loss.terms.<term>.plugin"),
    ({"x": {"plugin": "kl", "weight": 1}}, r"loss.terms.x.plugin='kl' is not a registered.*'kd'"),
    ({"feature_sync": {"weight": 1, "distance": "nope"}},
     r"loss.terms.feature_sync: distance='nope' is not a registered distance \(one of "
     r"\['attention'.*'mse'.*\]\)"),
    ({"kd": {"weight": 1, "temp": 2}},
     r"loss.terms.kd: unknown key\(s\) \['temp'\] for plugin 'kd'; "
     r"it accepts \['weight', 'plugin', 'temperature'\]"),
    ({"kd": {"temperature": 2}}, r"loss.terms.kd has no weight"),
    ({"kd": {"weight": -1}}, r"loss.terms.kd.weight=-1 must be a number >= 0"),
    ({"kd": {"weight": 1, "temperature": 0}}, r"loss.terms.kd: temperature=0 must be > 0"),
    ({"cross_path": {"weight": 1, "mode": "prefix"}},
     r"loss.terms.cross_path: mode='prefix' is unknown.*'all_prefix'"),
    ({"cross_path": {"weight": 1, "target": "kl"}}, r"target='kl' is unknown.*'both'"),
    ({"feature_sync": {"weight": 1, "directions": "up"}}, r"directions='up' is unknown"),
    ({"ce": {"weight": 0}}, r"no term has a non-zero weight"),
    ({"ce": 1.0}, r"loss.terms.ce must be a mapping"),
    ({}, r"loss.terms must be a non-empty mapping"),
])
def test_config_errors_name_the_key_and_the_known_values(terms, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_loss(terms)


def test_unknown_distance_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^distance='l2' is not a registered distance \(one "
                                          r"of \['attention', 'cka', 'cosine', "
                                          r"'cosine_per_position', 'l1', 'mse', 'mse_cosine', "
                                          r"'mse_cosine_per_position', 'smooth_l1'\]\)$"):
        get_distance("l2")


def test_random_masks_are_mixed_and_half_single_switch():
    n = 4
    draws = [random_mixed_mask(n) for _ in range(4000)]
    mixed = [m for m in masks_for_order("all", n) if "S" in m and "T" in m]
    assert set(draws) == set(mixed)
    single = {"TSSS", "TTSS", "TTTS", "SSST", "SSTT", "STTT"}
    # Half the draws are single switches; the other half is uniform over all 14 mixed
    # masks, 6 of which are single switches too.
    share = sum(m in single for m in draws) / len(draws)
    assert abs(share - (0.5 + 0.5 * 6 / 14)) < 0.03


def test_cross_path_modes_choose_their_masks():
    assert CrossPath("all_prefix").masks(4) == ["TSSS", "TTSS", "TTTS"]
    assert CrossPath("all_suffix").masks(4) == ["SSST", "SSTT", "STTT"]
    assert len(CrossPath("random").masks(4)) == 1
    assert len(CrossPath("sampled", num_masks=3).masks(4)) == 3


def pinned_values():
    """Every term and distance on a fixed tiny model and batch (seeded by conftest)."""
    hybrid, shape = make_hybrid()
    outputs = step_outputs(hybrid, shape)
    terms = {
        "ce": {"weight": 1},
        "ce_smooth": {"plugin": "ce", "weight": 1, "label_smoothing": 0.1},
        "kd": {"weight": 1, "temperature": 2},
        "feature_recon": {"weight": 1, "distance": "mse"},
        "cross_all_prefix": {"plugin": "cross_path", "weight": 1, "mode": "all_prefix"},
        "cross_all_suffix_kd": {"plugin": "cross_path", "weight": 1, "mode": "all_suffix",
                                "target": "kd"},
        "cross_random_ce": {"plugin": "cross_path", "weight": 1, "mode": "random",
                            "target": "ce"},
        "cross_sampled": {"plugin": "cross_path", "weight": 1, "mode": "sampled",
                          "num_masks": 3},
        **{f"feature_sync_{d}": {"plugin": "feature_sync", "weight": 1, "distance": d}
           for d in DISTANCES.names()},
    }
    total, values = build_loss(terms)(outputs)
    return {"total": total.item(), **{k: v.item() for k, v in values.items()}}


def test_loss_values_match_the_pinned_fixture():
    values = pinned_values()
    if UPDATE_FIXTURE:
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(values, indent=2) + "\n")
    pinned = json.loads(FIXTURE.read_text())
    assert values.keys() == pinned.keys()
    for name, value in pinned.items():
        assert values[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (
            f"{name} changed; if intended, regenerate with PWL_UPDATE_LOSS_FIXTURE=1")


def test_paper_preset_prints_the_reference_recipe_with_its_weights():
    cfg = compose_cfg("train", ["loss=paper", "model=resnet", "data=synthetic"])
    assert cfg.model.adapter == "identity_if_equal"
    assert adapter_lr_mult(cfg.loss, cfg.optim) == 0.2
    hybrid = build_hybrid(OmegaConf.to_container(cfg.model, resolve=True))
    formula = build_loss(cfg.loss.terms).describe(hybrid)
    d = "mse_cosine"
    for part in ["loss = 0.4*ce[CE]", "0.6*kd[KL(T=2)]",
                 f"1.0*feature_sync[mean_i [{d}(s_i, to_S(t_i)) + {d}(t_i, to_T(s_i))]]",
                 # Equal widths everywhere: identity adapters, nothing to reconstruct.
                 "1.0*feature_recon[0 (every boundary's adapters are identities)]",
                 "2.0*cross_path[mean_{m in random} [KL(T=2)](logits_m)]"]:
        assert part in formula, part
    # Where adapters learn, the reconstruction trains the student's feature too (no sg).
    narrow = loss_cfg("paper")
    assert "to_S(to_T(s_i)), s_i)" in str(build_loss(narrow.terms))
    all_prefix = str(build_loss(loss_cfg("paper_all").terms))
    assert "2.0*cross_path[mean_{m in all_prefix} [0.6*KL(T=2) + 0.4*CE](logits_m)]" in all_prefix
    assert adapter_lr_mult(loss_cfg("pwl"), {"adapter_lr_mult": 0.5}) == 0.5


@pytest.mark.parametrize("shape", [(1, 2, 1, 2), (1, 2, 2)], ids=["maps", "tokens"])
def test_mse_cosine_per_position_by_hand(shape):
    # Two positions with features (1, 0) and (0, 2) against (0, 1) and (0, 1).
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])      # (position, feature)
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    if len(shape) == 4:                              # (B, C, H, W): features on dim 1
        a, b = a.T.reshape(shape), b.T.reshape(shape)
    else:                                            # (B, L, D)
        a, b = a.reshape(shape), b.reshape(shape)
    # MSE: squared differences 1, 1, 0, 1 -> 3/4. Cosines: 0 at the first position
    # (orthogonal), 1 at the second (parallel) -> mean(1 - cos) = 1/2.
    assert get_distance("mse_cosine_per_position")(a, b).item() == pytest.approx(0.75 + 0.5)
    # Per sample the flattened vectors (1, 0, 0, 2) and (0, 0, 1, 1) give cos = 2 / sqrt(10).
    assert get_distance("mse_cosine")(a, b).item() == pytest.approx(0.75 + 1 - 2 / 10**0.5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_mse_equals_torch_mse_loss_in_value_and_both_gradients(layout, bf16):
    # pwl's mse has its own backward (for speed); it must be F.mse_loss exactly, including
    # under bf16 autocast, where F.mse_loss computes in fp32 from the bf16 inputs.
    torch.manual_seed(0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a0, b0 = (torch.randn(4, 6, 5, 5).to(dtype).to(memory_format=layout) for _ in range(2))
    results = []
    for distance in (get_distance("mse"), F.mse_loss):
        a, b = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = distance(a, b)
        (3 * loss).backward()
        results.append((loss.float(), a.grad, b.grad))
    (value, grad_a, grad_b), (ref_value, ref_a, ref_b) = results
    assert value.item() == ref_value.item()
    assert grad_a.dtype == dtype and grad_b.dtype == dtype
    assert torch.equal(grad_a, ref_a) and torch.equal(grad_b, ref_b)


@pytest.mark.parametrize("wide_first", [True, False], ids=["fp32-bf16", "bf16-fp32"])
def test_mse_of_mixed_dtypes_is_the_fp32_mse_with_each_gradient_in_its_input_dtype(wide_first):
    # With one input fp32 the difference may be computed in that input's own buffer
    # dtype; both gradients must still come out right (and each in its input's dtype).
    torch.manual_seed(1)
    wide, narrow = torch.randn(3, 4, 5), torch.randn(3, 4, 5).to(torch.bfloat16)
    a0, b0 = (wide, narrow) if wide_first else (narrow, wide)
    a, b = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    get_distance("mse")(a, b).backward()
    ref_a, ref_b = a0.float().requires_grad_(True), b0.float().requires_grad_(True)
    F.mse_loss(ref_a, ref_b).backward()
    assert a.grad.dtype == a0.dtype and b.grad.dtype == b0.dtype
    assert torch.equal(a.grad, ref_a.grad.to(a0.dtype))
    assert torch.equal(b.grad, ref_b.grad.to(b0.dtype))


def test_mse_gradients_pass_gradcheck_and_follow_which_input_needs_them():
    a = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mse = get_distance("mse")
    assert torch.autograd.gradcheck(mse, (a, b))
    fixed = b.detach()
    mse(a, fixed).backward()
    assert fixed.grad is None and a.grad is not None
    with pytest.raises(ValueError, match=r"one shape.*\(2, 3, 4\) and \(2, 3\)"):
        mse(a, b[..., 0])


def test_identity_adapters_drop_the_reconstruction_where_widths_match():
    cfg = model_cfg("resnet")
    cfg["student"]["widths"] = [16, 16, 64, 128]      # boundary 1: 32 (teacher) vs 16
    hybrid = build_hybrid({**cfg, "adapter": "identity_if_equal"}).train()
    assert [hybrid.adapters.is_identity(i) for i in range(3)] == [True, False, True]
    outputs = step_outputs(hybrid, cfg["input_shape"])
    x = outputs.teacher_feats[0]
    assert hybrid.convert(0, x, "S") is x and hybrid.convert(0, x, "T") is x
    recon = FeatureRecon("mse", detach_student=False)
    assert "mean_{i in [1]}" in recon.describe(hybrid)
    t, s = outputs.teacher_feats[1], outputs.student_feats[1]
    only_boundary_1 = (F.mse_loss(hybrid.convert(1, hybrid.convert(1, t, "S"), "T"), t)
                       + F.mse_loss(hybrid.convert(1, hybrid.convert(1, s, "T"), "S"), s))
    value = recon(outputs)
    assert torch.allclose(value, only_boundary_1)
    value.backward()
    assert any(g is not None and g.abs().sum() > 0 for g in grads([hybrid.student]))

    same = build_hybrid({**model_cfg("resnet"), "adapter": "identity_if_equal"})
    assert sum(p.numel() for p in same.adapters.parameters()) == 0
    assert FeatureRecon("mse")(step_outputs(same, cfg["input_shape"])).item() == 0


class _Logits:
    """A step whose every mixed mask answers ``logits``: enough for CrossPath."""

    num_blocks = 2

    def __init__(self, logits, teacher_logits, labels):
        self.logits, self.teacher_logits, self.labels = logits, teacher_logits, labels

    def mixed_logits(self, mask):
        return self.logits


def test_cross_path_weighs_kl_and_ce_per_mask():
    # The student is uniform over 2 classes; the teacher's logits (2 ln 3, 0) at T=2 give
    # (3/4, 1/4). KL = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4; CE of label 0 = ln 2.
    step = _Logits(torch.zeros(2, 2), torch.tensor([[2 * math.log(3), 0.0]] * 2),
                   torch.tensor([0, 0]))
    kl = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    cross = CrossPath("all_prefix", "both", temperature=2.0, kd_weight=0.6, ce_weight=0.4)
    assert cross(step).item() == pytest.approx(0.4 * math.log(2) + 0.6 * kl)
    assert CrossPath("all_prefix", "kd", temperature=2.0)(step).item() == pytest.approx(kl)
    assert CrossPath("all_prefix", "ce")(step).item() == pytest.approx(math.log(2))
    with pytest.raises(ConfigError, match="ce_weight"):
        CrossPath(ce_weight=-1)


@pytest.mark.parametrize("mask", ["SSTT", "TTSS", "STST", "TSTS"])
def test_a_mixed_path_from_the_cache_has_the_loss_and_gradients_of_the_mask_run_whole(mask):
    torch.manual_seed(0)
    hybrid, shape = make_hybrid()
    params = [*hybrid.student.parameters(), *hybrid.adapters.parameters()]
    outputs = step_outputs(hybrid, shape)
    cached = F.cross_entropy(outputs.mixed_logits(mask), outputs.labels)
    whole = F.cross_entropy(hybrid(outputs.images, mask), outputs.labels)
    torch.testing.assert_close(cached, whole)
    got = torch.autograd.grad(cached, params, allow_unused=True)
    want = torch.autograd.grad(whole, params, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
