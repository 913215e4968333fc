"""The registered data modules and the schemas of their arguments.

A data config stored with a bundle (``manifest.json``) or a run
(``.hydra/config.yaml``) is data: it may only name a data module registered
here, with arguments its schema accepts, and it is built by calling that class
directly. The same schemas check the user's own data config at the entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from pwl.config import Schema, check, instantiate_as
from pwl.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from pwl.data.datamodule import ImageDataModule
from pwl.data.fashion_mnist import FashionMNISTDataModule
from pwl.data.synthetic import SyntheticDataModule
from pwl.errors import CheckpointError, ConfigError

# Far above real datasets; they keep a stored config from asking for unbounded memory.
MAX_IMAGES = 1 << 24
MAX_BATCH = 1 << 16

Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Images = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
PathStr = Annotated[str, Field(max_length=4096)]


class ImageDataArgs(Schema):
    """The arguments every ``ImageDataModule`` takes."""

    batch_size: Batch = 128
    eval_batch_size: Batch | None = None
    val_size: int = Field(5000, ge=0, le=MAX_IMAGES)
    seed: int = 0
    crop_padding: int = Field(0, ge=0, le=1024)
    crop_padding_mode: Literal["zeros", "reflect"] = "zeros"
    hflip: float = Field(0.0, ge=0.0, le=1.0)
    rotate_degrees: float = Field(0.0, ge=0.0, le=180.0)
    image_size: int | None = Field(None, ge=1, le=4096)
    in_chans: int | None = Field(None, ge=1, le=64)
    num_classes: int | None = Field(None, ge=1, le=1 << 20)
    num_workers: int = Field(0, ge=0, le=256)
    limit_train: Images | None = None


class SyntheticArgs(ImageDataArgs):
    num_train: Images = 2048
    num_test: Images = 512
    noise: float = Field(0.3, ge=0.0, le=100.0)
    data_seed: int = 0


class FashionMNISTArgs(ImageDataArgs):
    root: PathStr = "/usr/share/datasets/fashion-mnist"
    data_dir: PathStr = "data"
    download: bool = True


class CIFARArgs(ImageDataArgs):
    data_dir: PathStr = "data"
    download: bool = False


@dataclass(frozen=True)
class DataModuleEntry:
    """A registered data module and the schema of its arguments."""

    cls: type[ImageDataModule]
    args: type[ImageDataArgs]


DATA_MODULES: dict[str, DataModuleEntry] = {}


def register_data(cls: type[ImageDataModule], args: type[ImageDataArgs]) -> None:
    """Registers ``cls``; configs name it by ``pwl.data.<Class>`` or its defining module."""
    entry = DataModuleEntry(cls, args)
    for target in (f"pwl.data.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"):
        DATA_MODULES[target] = entry


for _cls, _args in ((SyntheticDataModule, SyntheticArgs),
                    (FashionMNISTDataModule, FashionMNISTArgs),
                    (CIFAR10DataModule, CIFARArgs), (CIFAR100DataModule, CIFARArgs)):
    register_data(_cls, _args)

FIX = "a stored data config may only name a registered data module; pass data=<name> instead"


def data_entry_of(cfg: Any) -> DataModuleEntry | None:
    """The registered entry ``cfg["_target_"]`` names, None if it names another class."""
    target = cfg.get("_target_") if isinstance(cfg, dict) else None
    return DATA_MODULES.get(target) if isinstance(target, str) else None


def check_data_cfg(cfg: Any, key: str = "data", fix: str = "") -> ImageDataArgs:
    """Validates a data config of a registered data module.

    Raises:
        ConfigError: naming ``<key>._target_`` if it is no registered module, else the
            first wrong argument.
    """
    entry = data_entry_of(cfg)
    if entry is None:
        target = cfg.get("_target_") if isinstance(cfg, dict) else cfg
        names = sorted(t for t in DATA_MODULES if t.count(".") == 2)
        raise ConfigError(f"{key}._target_={str(target)[:80]!r} is not a registered data "
                          f"module (one of {names}); {fix or FIX}")
    return check(entry.args, {k: v for k, v in cfg.items() if k != "_target_"}, key, fix)


def build_saved_datamodule(cfg: Any, source: str | Path) -> ImageDataModule:
    """Builds a stored data config read from ``source`` (not set up).

    It never downloads: where data comes from is for the user to say, not a stored file
    (``data=<name>`` on the command line does download when its config says so).
    """
    try:
        args = check_data_cfg(cfg, "data", "pass data=<name> instead")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None
    kwargs = args.model_dump(exclude_unset=True)
    if "download" in kwargs:
        kwargs["download"] = False
    return data_entry_of(cfg).cls(**kwargs)


def build_datamodule(data_cfg: Mapping[str, Any], saved_from: str | Path | None = None,
                     **overrides: Any) -> ImageDataModule:
    """Builds ``data_cfg`` (with ``overrides`` replacing its keys) and sets it up.

    A data config (``conf/data/*.yaml``) builds an ``ImageDataModule``. The user's own
    config keeps Hydra's full ``_target_`` power; a stored one is data (see the module
    docstring).

    Args:
        data_cfg: a data config (``conf/data``).
        saved_from: None for the user's own config (Hydra instantiates its ``_target_``);
            else the file it was read from: it must then name a registered data module
            with valid arguments (see ``pwl.data.registry``), and nothing is imported.
        **overrides: keys replacing those of ``data_cfg`` (``eval_batch_size``...).

    Raises:
        ConfigError: the config does not build an ImageDataModule (the error names ``data``);
            a PWLError raised by the data module itself is passed on as it is.
    """
    if saved_from is not None:
        dm = build_saved_datamodule({**data_cfg, **overrides}, saved_from)
    else:
        dm = instantiate_as({**data_cfg, **overrides}, "data")
    if not isinstance(dm, ImageDataModule):
        raise ConfigError(f"data._target_={data_cfg.get('_target_')} is not an ImageDataModule")
    dm.setup()
    return dm
