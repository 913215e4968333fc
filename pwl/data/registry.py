"""Data modules built from configs: the user's own, and stored ones, which are data.

A data config stored with a bundle (``manifest.json``) or a run
(``.hydra/config.yaml``) may only name a data module registered with
``@register_data`` (``pwl.data.datamodule.DATA_MODULES``), with arguments its schema
accepts, and it is built by calling that class directly. The same schemas check the
user's own data config at the entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pwl.config import instantiate_as
from pwl.data.datamodule import DATA_MODULES, DataModule
from pwl.errors import CheckpointError, ConfigError


def build_saved_datamodule(cfg: Any, source: str | Path) -> DataModule:
    """Builds a stored data config read from ``source`` (not set up).

    It never downloads: where data comes from is for the user to say, not a stored file
    (``data=<name>`` on the command line does download when its config says so).
    """
    try:
        entry, args = DATA_MODULES.check(cfg, "data", "pass data=<name> instead")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    kwargs = args.model_dump(exclude_unset=True)
    if "download" in kwargs:
        kwargs["download"] = False
    return entry.obj(**kwargs)


def build_datamodule(data_cfg: Mapping[str, Any], saved_from: str | Path | None = None,
                     **overrides: Any) -> DataModule:
    """Builds ``data_cfg`` (with ``overrides`` replacing its keys) and sets it up.

    A data config (``conf/data/*.yaml``) builds a ``DataModule`` (images or text). The user's own
    config keeps Hydra's full ``_target_`` power; a stored one is data (see the module
    docstring).

    Args:
        data_cfg: a data config (``conf/data``).
        saved_from: None for the user's own config (Hydra instantiates its ``_target_``);
            else the file it was read from: it must then name a registered data module
            with valid arguments (see the module docstring), and nothing is imported.
        **overrides: keys replacing those of ``data_cfg`` (``eval_batch_size``...).

    Raises:
        ConfigError: the config does not build a DataModule (the error names ``data``);
            a PWLError raised by the data module itself is passed on as it is.
    """
    if saved_from is not None:
        dm = build_saved_datamodule({**data_cfg, **overrides}, saved_from)
    else:
        dm = instantiate_as({**data_cfg, **overrides}, "data")
    if not isinstance(dm, DataModule):
        raise ConfigError(f"data._target_={data_cfg.get('_target_')} is not a pwl DataModule")
    dm.setup()
    return dm
