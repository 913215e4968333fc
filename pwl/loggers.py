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


def wandb_logger(mode: str = "auto", save_dir: str = ".", **kwargs) -> WandbLogger:
    """A WandbLogger, offline unless W&B credentials are configured.

    Args:
        mode: ``auto`` (online with credentials, else offline; ``WANDB_MODE`` wins),
            ``online`` or ``offline``. Offline runs stay under ``save_dir/wandb``
            for a later ``wandb sync``.
        **kwargs: any WandbLogger argument (project, name, group, tags...).
    """
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}; use one of {list(MODES)}")
    if mode == "auto":
        env = os.environ.get("WANDB_MODE")
        mode = env if env in ("online", "offline") else (
            "online" if wandb_has_credentials() else "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, offline=mode == "offline", **kwargs)
