"""``python -m pwl.train phase=teacher|distill``: the two training phases.

The phase (``conf/phase/``) names the LightningModule, its checkpoint monitor, its
epochs and its callbacks. phase=teacher trains a teacher from scratch and writes
``teacher.safetensors`` and ``model.yaml`` into the run directory. phase=distill
trains the student and the adapters against a frozen teacher
(``teacher=<teacher run dir or file>``) and writes ``hybrid.safetensors`` and
``model.yaml``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from pwl import speed
from pwl.cli import CONF_DIR, finish_wandb, user_errors_as_one_line
from pwl.config import instantiate_as, to_dict
from pwl.errors import ConfigError
from pwl.lit import EarlyExitModule, TeacherModule
from pwl.schemas import check_app_config
from pwl.weights import HYBRID_FILE, TEACHER_FILE, save_model_cfg, save_weights

EXITS_FILE = "exits.safetensors"


def _instantiate_all(node: DictConfig | None, **kwargs) -> list[Any]:
    """Instantiates every ``_target_`` entry of a mapping; ``null`` entries switch one off."""
    if not node:
        return []
    return [hydra.utils.instantiate(v, **kwargs) for v in node.values()
            if v is not None and "_target_" in v]


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The phase's LightningModule (``phase.module``) on the model and optim configs.

    Those two hold ``_target_`` entries the module builds itself, so they are passed
    resolved rather than through Hydra's recursive instantiation.
    """
    make = instantiate_as(cfg.phase.module, "phase.module")
    kwargs: dict[str, Any] = {}
    if cfg.phase.name in ("distill", "early_exit"):
        if not cfg.get("teacher"):
            raise ConfigError(f"phase={cfg.phase.name} needs teacher=<teacher run directory or "
                              "teacher.safetensors>; train one first with "
                              "`python -m pwl.train phase=teacher`")
        kwargs["teacher"] = str(Path(hydra.utils.to_absolute_path(cfg.teacher)))
    if cfg.phase.name == "distill":
        if cfg.get("student_from"):
            kwargs["student_from"] = str(Path(hydra.utils.to_absolute_path(cfg.student_from)))
        elif cfg.loss.name == "posthoc":
            raise ConfigError("loss=posthoc trains adapters for a finished student; pass "
                              "student_from=<distill run directory> (e.g. a loss=kd run)")
    return make(to_dict(cfg.model), optim=to_dict(cfg.optim), **kwargs)


def load_best(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Gives ``module`` the weights of the best checkpoint on the validation monitor.

    The weights a run saves (and tests) are then the ones model selection chose, whether
    or not the run is tested; without a checkpoint callback the last weights stay.
    """
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt else ""
    if best:
        # Written by this run a moment ago: a trusted file, not user input.
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, float]:
    """Fits and tests one training phase; returns the logged metrics.

    Args:
        cfg: the composed ``conf/train.yaml``.
        extra_callbacks: callbacks added to the configured ones (for programmatic use).
    """
    check_app_config(cfg, "train")
    if cfg.get("phase") is None:
        raise ConfigError("phase is not set; pass phase=teacher or phase=distill (a config "
                          "saved before phases existed: rerun its command line instead)")
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist; pass a checkpoint of "
                          "an earlier run (its checkpoints/last.ckpt) to resume")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    if cfg.get("channels_last", False):
        speed.use_channels_last(module)
    callbacks = _instantiate_all(cfg.get("callbacks")) + list(extra_callbacks or [])
    loggers = _instantiate_all(cfg.get("logger"))
    precision, chosen = speed.resolve_precision(cfg.trainer.get("precision", speed.FULL),
                                                cfg.trainer.get("accelerator", "auto"))
    if chosen:
        rank_zero_info(chosen)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks,
                                                 logger=loggers or False, precision=precision)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        with warnings.catch_warnings():
            # The frozen teacher is in eval mode on purpose; Lightning's notice about it is noise.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        load_best(trainer, module)
        if cfg.get("test", True):
            trainer.test(module, datamodule=datamodule)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        finish_wandb()
    if trainer.is_global_zero:
        if isinstance(module, TeacherModule):
            save_weights(module.net, run_dir / TEACHER_FILE, {"format": "pwl-teacher"})
        elif isinstance(module, EarlyExitModule):
            save_weights(module.heads, run_dir / EXITS_FILE, {"format": "pwl-exits"})
        else:
            save_weights(module.hybrid, run_dir / HYBRID_FILE, {"format": "pwl-hybrid"})
        save_model_cfg(module.model_cfg, run_dir)
    return metrics


@user_errors_as_one_line
def run(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    rank_zero_info(f"run directory: {cfg.run_dir}")
    monitor = cfg.get("optimized_metric")
    return metrics.get(monitor) if monitor else None


def phase_from_stage(args: list[str]) -> list[str]:
    """Maps the old ``stage=teacher|distill`` onto ``phase=``, with a one-line notice.

    Kept for one release so that recorded command lines still run; a *stage* now means
    a loading stage only.
    """
    old = [a for a in args if a.startswith("stage=")]
    if old:
        print(f"warning: {old[0]} is deprecated and goes in the next release; use "
              f"phase={old[0].removeprefix('stage=')}", file=sys.stderr)
    return [f"phase={a.removeprefix('stage=')}" if a in old else a for a in args]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    return run(cfg)


def main() -> float | None:
    """Console-script entry point (``pwl-train``)."""
    sys.argv[1:] = phase_from_stage(sys.argv[1:])
    return _hydra_main()


if __name__ == "__main__":
    main()
