"""recipe=paper: the reference's loss, optimizer and clipping, by one name."""

import pytest
import torch
import torch.nn.functional as F

from pwl.losses import build_loss
from pwl.losses.distances import mse_cosine
from tests.conftest import compose_cfg


def test_recipe_paper_brings_the_reference_loss_optimizer_and_clipping():
    cfg = compose_cfg("train", ["recipe=paper", "phase=distill"])
    terms = cfg.loss.terms
    assert cfg.loss.name == "paper"
    assert terms.feature_sync.distance == terms.feature_recon.distance == "mse_cosine"
    assert (terms.ce.weight, terms.kd.weight, terms.kd.temperature) == (0.4, 0.6, 2.0)
    assert (terms.cross_path.weight, terms.cross_path.target) == (2.0, "kd")
    opt = cfg.optim.optimizer
    assert (opt.lr, opt.momentum, opt.nesterov, opt.weight_decay) == (0.05, 0.9, False, 5e-4)
    assert (cfg.optim.scheduler.warmup_epochs, cfg.optim.scheduler.min_lr) == (0, 1e-5)
    assert cfg.loss.adapter_lr_mult == 0.2 and cfg.model.adapter == "identity_if_equal"
    assert cfg.trainer.gradient_clip_val == 1.0
    # an experiment's own optimizer never wins over the recipe's
    vit = compose_cfg("train", ["recipe=paper", "experiment=fmnist_vit", "phase=distill"])
    assert (vit.optim.optimizer._target_, vit.optim.optimizer.lr) == ("torch.optim.SGD", 0.05)


def test_the_paper_distance_is_mse_plus_the_per_sample_cosine_over_the_flattened_feature():
    # Two samples of a (2, 1, 2) feature; by hand: squared errors 0, 1, 0, 0 -> mse 0.25;
    # sample 0: a=(1,0), b=(1,1): cos = 1/sqrt(2); sample 1: a=(0,2), b=(0,2): cos = 1.
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    b = torch.tensor([[[1.0, 1.0]], [[0.0, 2.0]]])
    expected = 0.25 + ((1 - 2 ** -0.5) + 0.0) / 2
    assert mse_cosine(a, b).item() == pytest.approx(expected)
    # the reference formula, as written there
    f1, f2 = a.flatten(start_dim=1), b.flatten(start_dim=1)
    reference = F.mse_loss(a, b) + (1 - F.cosine_similarity(f1, f2, dim=-1)).mean()
    assert mse_cosine(a, b).item() == pytest.approx(reference.item())


def test_the_paper_loss_prints_its_distance_and_weights():
    text = str(build_loss(compose_cfg("train", ["recipe=paper"]).loss.terms))
    assert "mse_cosine" in text and "0.4" in text and "0.6" in text and "2" in text
