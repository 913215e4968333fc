"""Config validation at the entry points: one line naming the key, before anything is built."""

import pytest

from pwl.errors import ConfigError
from pwl.schemas import check_app_config
from tests.conftest import TINY, compose_cfg, run_module

FIX = "; fix it on the command line or in the config"


@pytest.mark.parametrize("override, message", [
    ("optim.optimizer.lr=-1", "optim.optimizer.lr=-1 must be > 0"),
    ("optim.optimizer.lr=0", "optim.optimizer.lr=0 must be > 0"),
    ("optim.optimizer.weight_decay=-0.1", "optim.optimizer.weight_decay=-0.1 must be >= 0"),
    ("optim.optimizer.momentum=1.5", "optim.optimizer.momentum=1.5 must be <= 1"),
    ("optim.adapter_lr_mult=inf", "optim.adapter_lr_mult=inf must be a finite number"),
    ("optim.scheduler.warmup_epochs=-1", "optim.scheduler.warmup_epochs=-1 must be >= 0"),
    ("data.batch_size=0", "data.batch_size=0 must be >= 1"),
    ("data.eval_batch_size=-4", "data.eval_batch_size=-4 must be >= 1"),
    ("data.hflip=2", "data.hflip=2 must be <= 1"),
    ("data.rotate_degrees=-5", "data.rotate_degrees=-5 must be >= 0"),
    ("data.crop_padding_mode=mirror",
     "data.crop_padding_mode='mirror' must be one of 'zeros' or 'reflect'"),
    ("+optim.scheduler.min_lr=-1", "optim.scheduler.min_lr=-1 must be >= 0"),
    ("+data.surprise=1", "data.surprise is not a known key"),
    ("loss.terms.kd.temperature=0", "loss.terms.kd.temperature=0 must be > 0"),
    ("loss.terms.ce.weight=-1", "loss.terms.ce.weight=-1 must be >= 0"),
    ("loss.terms.ce.weight=nan", "loss.terms.ce.weight=nan must be a finite number"),
    ("loss.terms.cross_path.num_masks=0", "loss.terms.cross_path.num_masks=0 must be >= 1"),
    ("label_smoothing=1", "label_smoothing=1 must be < 1"),
    ("trainer.limit_train_batches=1.5",
     "trainer.limit_train_batches=1.5 must be a number of batches or a fraction in [0, 1]"),
    ("trainer.gradient_clip_val=-2", "trainer.gradient_clip_val=-2 must be >= 0"),
    ("callbacks.stage_eval.every_n_epochs=0", "callbacks.stage_eval.every_n_epochs=0 must be >= 1"),
    ("epochs.teacher=true", "epochs.teacher=True input should be a valid integer"),
])
def test_a_wrong_training_knob_is_named_with_its_value(override, message):
    with pytest.raises(ConfigError) as caught:
        check_app_config(compose_cfg("train", [*TINY, "run_dir=.", override]), "train")
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith(FIX)


def test_the_shipped_configs_pass():
    check_app_config(compose_cfg("train", [*TINY, "run_dir=."]), "train")
    check_app_config(compose_cfg("train", ["run_dir=.", "loss=kd", "optim=adamw"]), "train")
    check_app_config(compose_cfg("serve", ["bundle=b", "bandwidth=20MB"]), "serve")
    check_app_config(compose_cfg("bench", []), "bench")
    check_app_config(compose_cfg("export", ["checkpoint=c", "out=o"]), "export")


@pytest.mark.parametrize("app, overrides, message", [
    ("serve", ["bundle=b", "bandwidth=-5MB"], "bandwidth='-5MB' must be positive"),
    ("serve", ["bundle=b", "batch_size=0"], "batch_size=0 must be >= 1"),
    ("serve", ["bundle=b", "max_seconds=0"], "max_seconds=0 must be > 0"),
    ("evaluate", ["checkpoint=c", "batch_size=0"], "batch_size=0 must be >= 1"),
    ("bench", ["repeats=0"], "repeats=0 must be >= 1"),
    ("bench", ["bandwidths=[fast]"], "bandwidths='fast' is not a rate"),
])
def test_the_other_entry_points_check_their_knobs(app, overrides, message):
    with pytest.raises(ConfigError, match="^" + message):
        check_app_config(compose_cfg(app, overrides), app)


def test_train_exits_2_with_one_line_naming_the_key(tmp_path):
    done = run_module("pwl.train", *TINY, "optim.optimizer.lr=-1", "data.batch_size=0",
                      f"run_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: optim.optimizer.lr=-1 must be > 0 (and 1 more)" + FIX]
    assert not (tmp_path / "checkpoints").exists()
