import pytest
import torch

from pwl.adapters import KINDS, Adapters, build_adapter
from pwl.errors import ConfigError
from pwl.models import resnet


@pytest.mark.parametrize("kind", ["linear", "linear_bn"])
def test_equal_shapes_linear_starts_as_identity(kind):
    a = build_adapter((8, 6, 6), (8, 6, 6), kind).eval()
    x = torch.randn(2, 8, 6, 6)
    if kind == "linear":
        assert torch.equal(a(x), x)
    else:
        # A fresh BatchNorm in eval mode divides by sqrt(running_var + eps) = sqrt(1 + 1e-5).
        torch.testing.assert_close(a(x), x / (1 + 1e-5) ** 0.5)


def test_identity_kind_is_identity_and_refuses_other_shapes():
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(build_adapter((8, 6, 6), (8, 6, 6), "identity")(x), x)
    with pytest.raises(ConfigError, match=r"\(8, 6, 6\) -> \(4, 6, 6\)"):
        build_adapter((8, 6, 6), (4, 6, 6), "identity")


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("identity", "identity_if_equal")])
@pytest.mark.parametrize("src,dst", [
    ((8, 14, 14), (16, 14, 14)),   # narrower student -> teacher
    ((16, 14, 14), (8, 14, 14)),   # wider -> narrower
    ((16, 14, 14), (8, 7, 7)),     # smaller spatial size
    ((8, 7, 7), (16, 14, 14)),     # larger spatial size
    ((50, 96), (50, 64)),          # ViT tokens, other width
    ((50, 64), (50, 64)),          # ViT tokens, same width
])
def test_adapter_output_shapes(kind, src, dst):
    a = build_adapter(src, dst, kind)
    y = a(torch.randn(3, *src))
    assert y.shape == (3, *dst)
    y.sum().backward()
    assert all(p.grad is not None for p in a.parameters())


def test_identity_if_equal_is_a_fixed_identity_only_where_shapes_match():
    t = resnet(depths=[2, 2, 2], widths=[16, 32, 64], in_chans=1)
    s = resnet(depths=[1, 1, 1], widths=[16, 16, 64], in_chans=1)
    ad = Adapters.between(t, s, (1, 28, 28), "identity_if_equal")
    # Boundary 0: both (16, 28, 28); boundary 1: 32 vs 16 channels at 14 x 14.
    assert ad.is_identity(0) and not ad.is_identity(1)
    assert list(ad.to_student[0].parameters()) == list(ad.to_teacher[0].parameters()) == []
    x = torch.randn(2, 16, 28, 28)
    assert ad.to_student[0](x) is x and ad.to_teacher[0](x) is x
    assert ad.to_student[1](torch.randn(2, 32, 14, 14)).shape == (2, 16, 14, 14)
    assert all(name.startswith(("to_student.1.", "to_teacher.1."))
               for name, _ in ad.named_parameters())
    # Equal widths at another spatial size still need a resize: not an identity.
    assert not isinstance(build_adapter((8, 6, 6), (8, 3, 3), "identity_if_equal"),
                          torch.nn.Identity)


def test_token_linear_same_width_is_identity_initialised():
    a = build_adapter((5, 12), (5, 12), "linear")
    x = torch.randn(2, 5, 12)
    assert torch.allclose(a(x), x)


def test_mixed_feature_kinds_are_refused():
    with pytest.raises(ConfigError, match="feature maps"):
        build_adapter((8, 4, 4), (16, 32), "linear")
    with pytest.raises(ConfigError, match="token counts differ"):
        build_adapter((17, 32), (50, 32), "linear")


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ConfigError, match="linear_bn"):
        build_adapter((8, 4, 4), (8, 4, 4), "conv7")


def test_adapters_between_probe_both_networks():
    t = resnet(depths=[2, 2, 2], widths=[16, 32, 64], in_chans=1)
    s = resnet(depths=[1, 1, 1], widths=[8, 16, 32], in_chans=1)
    ad = Adapters.between(t, s, (1, 28, 28), "linear")
    assert ad.teacher_shapes == [(16, 28, 28), (32, 14, 14)]
    assert ad.student_shapes == [(8, 28, 28), (16, 14, 14)]
    assert t.training and s.training  # probing restores the mode


def test_block_count_mismatch_names_both_values():
    t = resnet(depths=[1, 1, 1], widths=[8, 8, 8])
    s = resnet(depths=[1, 1], widths=[8, 8])
    with pytest.raises(ConfigError, match="N=3 .* N=2"):
        Adapters.between(t, s, (3, 16, 16))
