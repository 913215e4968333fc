import pytest
import torch

from pwl.build import build_hybrid
from tests.conftest import MODEL_CONFIGS, model_cfg


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_forward_intermediates_ends_with_logits(name):
    hybrid = build_hybrid(model_cfg(name)).eval()
    x = torch.randn(2, *model_cfg(name)["input_shape"])
    with torch.no_grad():
        feats = hybrid.teacher.forward_intermediates(x)
        logits = hybrid.teacher(x)
    assert len(feats) == hybrid.num_blocks
    assert torch.equal(feats[-1], logits)
    assert logits.shape == (2, 10)


def test_unit_bytes_cover_the_whole_network():
    net = build_hybrid(model_cfg("resnet")).teacher
    total = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    assert sum(net.unit_num_bytes(i) for i in range(net.num_blocks)) == total
    keys = set(net.state_dict())
    covered = {k for i in range(net.num_blocks) for k in keys
               if k.startswith(tuple(net.unit_prefixes(i)))}
    assert covered == keys


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_builds_on_the_meta_device(name):
    from pwl.build import build_net

    with torch.device("meta"):
        net = build_net(model_cfg(name)["teacher"], "teacher")
    assert all(p.device.type == "meta" for p in net.parameters())
