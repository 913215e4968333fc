import pytest
import torch

from pwl.errors import ConfigError
from pwl.models import resnet, timm_split, vgg, vit


@pytest.mark.parametrize("depths,widths,block", [([1, 1], [8, 16], "basic"),
                                                  ([1, 2, 1], [4, 8, 8], "bottleneck")])
def test_resnet_blocks_follow_depths(depths, widths, block):
    net = resnet(depths=depths, widths=widths, block=block, in_chans=1, num_classes=7)
    assert net.num_blocks == len(depths)
    assert [len(b) for b in net.blocks] == depths
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_resnet_rejects_mismatched_lengths():
    with pytest.raises(ConfigError, match=r"depths \[1, 1\] and widths \[8\]"):
        resnet(depths=[1, 1], widths=[8])


def test_vgg_survives_five_pools_on_28px():
    net = vgg(depths=[1] * 5, widths=[4, 8, 8, 8, 8], in_chans=1)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vit_groups_layers_into_blocks():
    net = vit(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=5, num_heads=2,
              num_blocks=2)
    assert [len(b) for b in net.blocks] == [3, 2]
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vit_rejects_bad_patch_size():
    with pytest.raises(ConfigError, match="img_size=30 is not a multiple of patch_size=4"):
        vit(img_size=30, patch_size=4)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}),
    ("convnext_atto", {}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}),
    ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}),
])
def test_timm_split_matches_timm_forward(name, kwargs):
    import timm

    torch.manual_seed(0)
    net = timm_split(name, num_blocks=4, in_chans=3, num_classes=5, **kwargs).eval()
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=5, in_chans=3, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
    assert net.num_blocks == 4


def test_timm_split_groups_stages():
    net = timm_split("resnet18", num_blocks=2, num_classes=3).eval()
    assert net.num_blocks == 2
    assert [type(b).__name__ for b in net.blocks] == ["Sequential", "Sequential"]
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_timm_split_custom_names_error_lists_modules():
    with pytest.raises(ConfigError, match="top-level modules are"):
        timm_split("resnet18", stem=["conv1"], stages=["nope1", "nope2"], head=["fc"],
                   num_blocks=2)
