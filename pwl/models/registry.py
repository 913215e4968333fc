"""The registered model builders: what a saved model config may name.

A config a user writes runs through Hydra and may name any ``_target_``. A
config that arrives with a file (a bundle's ``manifest.json``, a run
directory's ``model.yaml``, a ``.ckpt``'s hyper-parameters) is data: it may
only name a builder registered here, with arguments its schema accepts, and
building it calls that builder directly. Nothing the file names is imported,
and strings in it are never resolved as interpolations.

Register a new family with ``register(builder, Args)`` where ``Args`` is a
``pwl.config.Schema`` of the builder's keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from pwl.blocks import BlockNet
from pwl.config import Schema, check
from pwl.errors import ConfigError, PWLError

FIX = (
    "a saved model config may only name a registered builder (pwl.models.registered(); add "
    "one with pwl.models.register)")
FIX_ARGS = "the saved model config is damaged or not from this pwl; re-create it (pwl.export)"


@dataclass(frozen=True)
class Builder:
    """A registered model builder.

    Attributes:
        name: the registry name (``resnet``).
        fn: builds the BlockNet from keyword arguments.
        args: the schema of those arguments.
        targets: the ``_target_`` spellings that name it (``pwl.models.resnet``...).
        from_file: fixes arguments that must not act when the config came with a file
            (``pretrained=True`` would download weights that the file replaces anyway).
    """

    name: str
    fn: Callable[..., BlockNet]
    args: type[Schema]
    targets: frozenset[str]
    from_file: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_BUILDERS: dict[str, Builder] = {}
_BY_TARGET: dict[str, Builder] = {}


def register(fn: Callable[..., BlockNet], args: type[Schema], *, name: str | None = None,
             targets: Iterable[str] = (),
             from_file: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Builder:
    """Registers ``fn`` with the schema ``args`` of its keyword arguments.

    It is named in configs by ``name`` (default ``fn.__name__``), by its dotted path
    ``<module>.<name>`` and by every spelling in ``targets``.
    """
    name = name or fn.__name__
    spellings = frozenset({name, f"{fn.__module__}.{fn.__qualname__}", *targets})
    taken = sorted(t for t in spellings if t in _BY_TARGET and _BY_TARGET[t].fn is not fn)
    if taken:
        raise ConfigError(f"model builder name {taken[0]!r} is already registered for "
                          f"{_BY_TARGET[taken[0]].name}; register {fn.__name__} under another")
    builder = Builder(name, fn, args, spellings, from_file)
    _BUILDERS[name] = builder
    _BY_TARGET.update(dict.fromkeys(spellings, builder))
    return builder


def registered() -> list[str]:
    """The names of the registered builders."""
    return sorted(_BUILDERS)


def builder_of(cfg: Any, key: str) -> Builder:
    """The registered builder that ``cfg["_target_"]`` names (a dictionary lookup, no import).

    Raises:
        ConfigError: naming ``<key>._target_`` if it is missing or not registered.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key}={str(cfg)[:60]!r} is not a mapping; {FIX}")
    target = cfg.get("_target_")
    builder = _BY_TARGET.get(target) if isinstance(target, str) else None
    if builder is None:
        raise ConfigError(f"{key}._target_={str(target)[:80]!r} is not a registered model "
                          f"builder (one of {registered()}); {FIX}")
    return builder


def check_saved_net(cfg: Any, key: str) -> tuple[Builder, dict[str, Any]]:
    """Validates a saved net config; returns its builder and the keyword arguments to call.

    Raises:
        ConfigError: one line naming the first wrong key under ``key``.
    """
    builder = builder_of(cfg, key)
    args = check(builder.args, {k: v for k, v in cfg.items() if k != "_target_"}, key, FIX_ARGS)
    kwargs = args.model_dump(exclude_unset=True)
    if builder.from_file is not None:
        kwargs = builder.from_file(kwargs)
    return builder, kwargs


def build_saved_net(cfg: Any, key: str) -> BlockNet:
    """Builds a saved net config through its registered builder, after validating it.

    Raises:
        ConfigError: the config is not valid, or the builder refused it (a PWLError
            of the builder is passed on as it is).
    """
    builder, kwargs = check_saved_net(cfg, key)
    try:
        net = builder.fn(**kwargs)
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
