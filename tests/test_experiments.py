"""Every experiment file runs (debug=fast, synthetic data); sweeps and launchers compose."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pwl.train import train
from tests.conftest import CONF_DIR, compose_cfg

EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))
FAST = ["debug=fast", "data=synthetic", "data.num_train=256", "data.num_test=64",
        "data.val_size=64", "data.batch_size=16", "data.eval_batch_size=64", "logger=none",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_both_phases(experiment, tmp_path):
    teacher = tmp_path / "teacher"
    train(compose_cfg("train", [f"experiment={experiment}", "phase=teacher", *FAST,
                                f"run_dir={teacher}"]))
    metrics = train(compose_cfg("train", [f"experiment={experiment}", "phase=distill",
                                          f"teacher={teacher}", *FAST,
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
