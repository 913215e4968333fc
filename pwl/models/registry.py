"""The registered model builders: what a saved model config may name.

A config a user writes runs through Hydra and may name any ``_target_``. A
config that arrives with a file (a bundle's ``manifest.json``, a run
directory's ``model.yaml``, a ``.ckpt``'s hyper-parameters) is data: it may
only name a builder registered here, with arguments its schema accepts, and
building it calls that builder directly. Nothing the file names is imported,
and strings in it are never resolved as interpolations.

Register a new family with ``@register(Args)`` on its builder, where ``Args`` is a
``pwl.config.Schema`` of the builder's keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from pwl.blocks import BlockNet
from pwl.errors import ConfigError, PWLError
from pwl.registry import Entry, Registry

FIX_ARGS = "the saved model config is damaged or not from this pwl; re-create it (pwl.export)"

MODELS: Registry[Callable[..., BlockNet]] = Registry(
    "model builder", package="pwl.models",
    fix="a saved model config may only name a registered builder (pwl.models.registered(); "
        "add one with @pwl.models.register)")
register = MODELS.register
registered = MODELS.names


def check_saved_net(cfg: Any, key: str) -> tuple[Entry, dict[str, Any]]:
    """Validates a saved net config; returns its builder and the keyword arguments to call.

    Raises:
        ConfigError: one line naming the first wrong key under ``key``.
    """
    builder, args = MODELS.check(cfg, key, FIX_ARGS)
    return builder, args.model_dump(exclude_unset=True)


def build_saved_net(cfg: Any, key: str) -> BlockNet:
    """Builds a saved net config through its registered builder, after validating it.

    Raises:
        ConfigError: the config is not valid, or the builder refused it (a PWLError
            of the builder is passed on as it is).
    """
    builder, kwargs = check_saved_net(cfg, key)
    try:
        net = builder.obj(**kwargs)
    except PWLError:
        raise
    except Exception as e:  # values each valid alone may still contradict each other
        raise ConfigError(f"{key}: {builder.name} cannot build these arguments "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ) from None
    if not isinstance(net, BlockNet):
        raise ConfigError(f"{key}: the registered builder {builder.name} built a "
                          f"{type(net).__name__}, not a BlockNet")
    return net


# Bounds far above any real model; they keep a hostile config from making even the
# memory-free build on the meta device take unbounded time.
MAX_BLOCKS = 64
MAX_DEPTH = 256
MAX_WIDTH = 1 << 13
MAX_CLASSES = 1 << 20
MAX_IMAGE = 1 << 13

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Depth = Annotated[int, Field(ge=1, le=MAX_DEPTH)]
NumBlocks = Annotated[int, Field(ge=2, le=MAX_BLOCKS)]
NumClasses = Annotated[int, Field(ge=1, le=MAX_CLASSES)]
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]
