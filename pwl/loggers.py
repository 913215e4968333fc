"""Logger factories for configs."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from pwl.errors import ConfigError

MODES = ("auto", "online", "offline")


def wandb_has_credentials() -> bool:
    """True when an API key is configured (environment variable or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc")).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


# Overrides that say where a run reads or writes, not what it is: left out of run names.
_UNNAMING = ("hydra.", "teacher=", "run_dir=", "ckpt_path=", "logger", "checkpoint=", "out=")


def sweep_identity(name: str | None, group: str | None) -> tuple[str | None, str | None]:
    """The W&B name and group of this run: in a Hydra multirun, named by its overrides and
    grouped by the sweep directory, so the runs of one sweep are told apart and kept together.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return name, group
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return name, group
    swept = swept_keys(Path(hc.sweep.dir) / "multirun.yaml")
    overrides = [o for o in hc.overrides.task if not o.startswith(_UNNAMING)
                 and (not swept or o.split("=", 1)[0].lstrip("+~") in swept)]
    named = f"{name}[{','.join(overrides)}]" if overrides else name
    return named, str(hc.sweep.dir)


def swept_keys(multirun_yaml: Path) -> set[str]:
    """The keys a multirun sweeps over (``key=a,b`` on its command line), from the
    ``multirun.yaml`` Hydra writes into the sweep directory; empty if it is not there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not multirun_yaml.is_file():
        return set()
    task = OmegaConf.load(multirun_yaml).hydra.overrides.task
    parsed = OverridesParser.create().parse_overrides(list(task))
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def wandb_logger(mode: str = "auto", save_dir: str = ".", name: str | None = None,
                 group: str | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger, offline unless W&B credentials are configured.

    Args:
        mode: ``auto`` (online with credentials, else offline; ``WANDB_MODE`` wins),
            ``online`` or ``offline``. Offline runs stay under ``save_dir/wandb``
            for a later ``wandb sync``.
        name: the run name; in a multirun the run's overrides are appended.
        group: the run group; in a multirun the sweep directory.
        **kwargs: any other WandbLogger argument (project, tags...).
    """
    name, group = sweep_identity(name, group)
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}; use one of {list(MODES)}")
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        mode = env if env in ("online", "offline") else (
            "online" if wandb_has_credentials() else "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, offline=mode == "offline", name=name, group=group,
                       **kwargs)
