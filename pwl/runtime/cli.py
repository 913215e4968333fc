"""What the runtime entry points (export, serve, bench) share: error exits and formatting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from pwl.errors import PWLError

T = TypeVar("T")


def run_entry(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Runs an entry point; a user-facing error is printed as one line and exits with code 2."""
    try:
        return fn(cfg)
    except (PWLError, OmegaConfBaseException, HydraException) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


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
