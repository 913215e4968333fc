"""One registry idiom for everything a config may name: model builders, data modules, losses.

Each family registers itself where it is defined, with a decorator (as timm's
``@register_model`` and torchdistill's ``@register_loss`` do)::

    @MODELS.register(ResNetArgs)
    def resnet(depths=(2, 2, 2, 2), ...) -> BlockNet: ...

A lookup is a dictionary lookup: a name read from a config or a file is never
imported, so a saved config (a bundle's manifest, a run's ``model.yaml``) reaches
only what was registered, with arguments its schema accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pwl.config import Schema, check
from pwl.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object.

    Attributes:
        name: its registry name (``resnet``, ``synthetic``, ``ce``).
        obj: the builder or class.
        args: the schema of its keyword arguments a saved config may give (None: not
            checked by a schema).
    """

    name: str
    obj: T
    args: type[Schema] | None


class Registry(Generic[T]):
    """Names -> registered objects of one kind.

    Args:
        kind: what is registered, for errors (``model builder``).
        package: where configs name the objects by ``_target_`` (``pwl.models``): an object
            is then also found as ``<package>.<its name>`` and by its own dotted path.
        fix: how to get a name accepted, appended to the error for an unknown one.
    """

    def __init__(self, kind: str, package: str | None = None, fix: str = "") -> None:
        self.kind, self.package, self.fix = kind, package, fix
        self._entries: dict[str, Entry[T]] = {}
        self._spellings: dict[str, Entry[T]] = {}

    def register(self, args: type[Schema] | None = None, *,
                 name: str | None = None) -> Callable[[T], T]:
        """A decorator registering its object under ``name`` (default: the object's name)."""
        def add(obj: T) -> T:
            entry = Entry(name or obj.__name__, obj, args)
            spellings = {entry.name}
            if self.package:
                spellings |= {f"{self.package}.{obj.__name__}",
                              f"{obj.__module__}.{obj.__qualname__}"}
            taken = sorted(s for s in spellings
                           if s in self._spellings and self._spellings[s].obj is not obj)
            if taken:
                raise ConfigError(f"{self.kind} name {taken[0]!r} is already registered for "
                                  f"{self._spellings[taken[0]].name}; register "
                                  f"{obj.__name__} under another")
            self._entries[entry.name] = entry
            self._spellings.update(dict.fromkeys(spellings, entry))
            return obj
        return add

    def names(self) -> list[str]:
        """The registry names, sorted."""
        return sorted(self._entries)

    def find(self, key: Any) -> Entry[T] | None:
        """The entry ``key`` names (a registry name or a ``_target_`` spelling), else None."""
        return self._spellings.get(key) if isinstance(key, str) else None

    def get(self, key: Any, where: str) -> Entry[T]:
        """The entry ``key`` names.

        Raises:
            ConfigError: ``<where>=<key> is not a registered <kind> (one of [...])``.
        """
        entry = self.find(key)
        if entry is None:
            raise ConfigError(f"{where}={str(key)[:80]!r} is not a registered {self.kind} "
                              f"(one of {self.names()})" + (f"; {self.fix}" if self.fix else ""))
        return entry

    def check(self, cfg: Any, key: str, fix: str = "") -> tuple[Entry[T], Schema]:
        """The entry a ``_target_`` config names and its other keys checked by its schema.

        Raises:
            ConfigError: one line naming ``<key>._target_`` or the first wrong argument.
        """
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{key}={str(cfg)[:60]!r} is not a mapping; {fix or self.fix}")
        entry = self.get(cfg.get("_target_"), f"{key}._target_")
        return entry, check(entry.args, {k: v for k, v in cfg.items() if k != "_target_"},
                            key, fix)
