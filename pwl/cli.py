"""What the Hydra entry points share: one-line errors and closing W&B runs."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from pwl.errors import PWLError


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
