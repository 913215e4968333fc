"""What the Hydra entry points share: one-line errors, W&B runs, run dir and output formatting."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from pwl.errors import PWLError


def _conf_dir() -> str:
    # An installed wheel carries the configs as pwl/conf (pyproject maps the package
    # pwl.conf onto the top-level conf/); a checkout or an editable install has only the
    # top-level conf/, where users edit them.
    package = Path(__file__).resolve().parent
    shipped = package / "conf"
    return str(shipped if (shipped / "train.yaml").is_file() else package.parent / "conf")


CONF_DIR = _conf_dir()
"""The Hydra config directory of the entry points (``config_path``), absolute."""


def user_errors_as_one_line(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns a user error (bad config, missing file) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PWLError, HydraException, OmegaConfBaseException) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def finish_wandb() -> None:
    """Closes an open W&B run so runs of a multirun never share one."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def run_dir() -> Path:
    """The Hydra run directory of the current job."""
    return Path(HydraConfig.get().runtime.output_dir)


def make_console() -> Console:
    """A rich console; when writing to a file or pipe, wide enough for the result tables."""
    term = Console()
    return term if term.is_terminal else Console(width=160)


def human_bytes(num: float) -> str:
    """A byte count in decimal units: 1234567 -> '1.2 MB'."""
    if num < 1000:
        return f"{num:.0f} B"
    for unit in ("KB", "MB"):
        num /= 1000
        if num < 1000:
            return f"{num:.1f} {unit}"
    return f"{num / 1000:.2f} GB"
