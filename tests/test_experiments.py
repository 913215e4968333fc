"""Every experiment file runs (debug=fast, synthetic data); sweeps and launchers compose."""

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from pwl.config import to_dict
from pwl.train import train
from tests.conftest import CONF_DIR, compose_cfg

# The image experiments; the language-model ones (lm_*) take text: tests/test_lm.py runs them.
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml")
                     if not p.stem.startswith("lm_"))
FAST = ["debug=fast", "data=synthetic", "data.num_train=256", "data.num_test=64",
        "data.val_size=64", "data.batch_size=16", "data.eval_batch_size=64", "logger=none",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1"]


# The paper's CIFAR pairs run at their full size on synthetic data of CIFAR's shape
# (3x32x32), with their own augmentation and optimiser; that they take CIFAR-100's
# classes is a matter of their config, checked below without training.
CIFAR_SHAPE = ["data.image_size=32", "data.in_chans=3"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_both_phases(experiment, tmp_path):
    fast = [*FAST, "data.num_classes=10",
            *(CIFAR_SHAPE if experiment.startswith("cifar_") else [])]
    teacher = tmp_path / "teacher"
    train(compose_cfg("train", [f"experiment={experiment}", "phase=teacher", *fast,
                                f"run_dir={teacher}"]))
    metrics = train(compose_cfg("train", [f"experiment={experiment}", "phase=distill",
                                          f"teacher={teacher}", *fast,
                                          f"run_dir={tmp_path / 'distill'}"]))
    assert "stages/prefix_auc" in metrics
    assert (tmp_path / "distill" / "stages.csv").is_file()


def test_experiment_keeps_its_model_on_other_data():
    cfg = compose_cfg("train", ["experiment=cifar_resnet", "data=synthetic"])
    assert cfg.data._target_.endswith("SyntheticDataModule")
    assert cfg.model.teacher.depths == [3, 4, 6, 3]


@pytest.mark.parametrize("data,classes", [(None, 10), ("cifar10", 10), ("cifar100", 100)])
def test_one_cifar_experiment_per_architecture_takes_either_dataset(data, classes):
    for arch in ("resnet", "vgg", "vit"):
        cfg = compose_cfg("train", [f"experiment=cifar_{arch}", *([f"data={data}"] if data else [])])
        assert cfg.data.num_classes == classes
        assert cfg.model.teacher.num_classes == classes and cfg.model.name == arch


# Per family: (blocks, teacher output channels per block, student's, teacher layers per block,
# student's), written from the paper's pairs.
PAPER_PAIRS = {
    "cifar_resnet": (4, [32, 64, 128, 256], [32, 64, 128, 256], [3, 4, 6, 3], [1, 1, 1, 1]),
    "cifar_vgg": (5, [64, 128, 256, 512, 512], [64, 128, 256, 512, 512], [2, 2, 3, 3, 3],
                  [1, 1, 1, 1, 1]),
    "cifar_vit": (6, [192] * 6, [192] * 6, [2] * 6, [1] * 6),
}


@pytest.mark.parametrize("experiment", sorted(PAPER_PAIRS))
def test_cifar_experiments_are_the_papers_pairs_with_the_reference_recipe(experiment):
    blocks, t_widths, s_widths, t_layers, s_layers = PAPER_PAIRS[experiment]
    cfg = compose_cfg("train", [f"experiment={experiment}", "data=synthetic", *CIFAR_SHAPE])
    teacher = hydra.utils.instantiate(to_dict(cfg.model.teacher))
    student = hydra.utils.instantiate(to_dict(cfg.model.student))
    x = torch.zeros(2, 3, 32, 32)
    for net, widths, layers in ((teacher, t_widths, t_layers), (student, s_widths, s_layers)):
        assert net.num_blocks == blocks
        assert [f.shape[1] if f.dim() == 4 else f.shape[-1]
                for f in net.forward_intermediates(x)[:-1]] == widths[:-1]
        assert [_layers(b) for b in net.blocks] == layers
    assert (cfg.data.rotate_degrees, cfg.data.crop_padding_mode) == (15, "reflect")
    assert (cfg.data.crop_padding, cfg.data.hflip) == (4, 0.5)
    for phase, lr in (("teacher", 0.1), ("distill", 0.05)):
        optim = to_dict(compose_cfg("train", [f"experiment={experiment}",
                                              f"phase={phase}"]).optim)
        assert optim["optimizer"]["lr"] == lr and optim["adapter_lr_mult"] == 0.2
        assert (optim["optimizer"]["momentum"], optim["optimizer"]["nesterov"]) == (0.9, False)


def _layers(block: torch.nn.Module) -> int:
    """Residual blocks, convs or transformer layers in one swap unit."""
    kinds = ("BasicBlock", "Bottleneck", "ConvNormAct", "Block")
    return sum(type(m).__name__ in kinds for m in block.modules())


@pytest.mark.parametrize("sweep,key", [("architectures", "model"),
                                       ("alignment_losses", "loss.terms.feature_sync.distance"),
                                       ("cross_modes", "loss.terms.cross_path.mode")])
def test_sweep_presets_name_their_axis(sweep, key):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", [f"sweep={sweep}"], return_hydra_config=True)
    values = str(cfg.hydra.sweeper.params[key]).split(",")
    assert len(values) >= 3


def test_slurm_launcher_composes():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.timeout_min == 720


@pytest.mark.parametrize("loss", ["pwl", "paper"])
def test_alignment_sweep_moves_the_sync_and_the_recon_distance_together(loss):
    cfg = compose_cfg("train", ["sweep=alignment_losses", f"loss={loss}",
                                "loss.terms.feature_sync.distance=cka"])
    assert cfg.loss.terms.feature_sync.distance == "cka"
    assert cfg.loss.terms.feature_recon.distance == "cka"
