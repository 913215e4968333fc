"""Reading weight files the way a deployment does: paced, hashed, plain or memory-mapped.

A bandwidth limit emulates slow storage or a network download: files are read
in chunks and the reader sleeps so that the bytes read since the start never
run ahead of the rate. A plain read pulls the file into memory and parses it
there; a memory-mapped read streams the file once (for the hash and the pace)
and then lets safetensors map it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from pwl.errors import CheckpointError, ConfigError

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "kbit": 125, "mbit": 125e3, "gbit": 125e6}
_MIN_CHUNK = 4 << 10
_MAX_CHUNK = 4 << 20


class LoadingStopped(Exception):
    """Raised inside a read when its stop event is set (``ProgressiveModel.close``)."""


def parse_bandwidth(value: float | int | str | None, key: str = "bandwidth") -> float | None:
    """Bytes per second from a number or a string such as ``"50MB"``, ``"400Mbit"``, ``"8MiB"``.

    ``None``, ``0`` and ``"none"`` mean no limit.
    """
    if value is None or value == 0 or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*?)(?:/s)?\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ConfigError(f"{key}={value!r} is not a rate; give bytes per second as a number "
                              "or with a unit: 50MB, 400Mbit, 8MiB")
        try:
            rate = float(m.group(1)) * _UNITS[unit]
        except ValueError:
            raise ConfigError(f"{key}={value!r}: {m.group(1)!r} is not a number") from None
    if rate <= 0:
        raise ConfigError(f"{key}={value!r} must be positive (or null for no limit)")
    return rate


class Pacer:
    """Holds reads to ``bytes_per_second``: after n bytes it sleeps until start + n / rate.

    One pacer is shared by consecutive files, like one network link.

    Args:
        bytes_per_second: the rate; ``None`` reads as fast as the storage allows.
        stop: when set, the next ``consumed`` raises ``LoadingStopped``.
    """

    def __init__(self, bytes_per_second: float | None = None,
                 stop: threading.Event | None = None) -> None:
        self.rate = bytes_per_second
        self.stop = stop
        self.start = time.perf_counter()
        self.total = 0

    @property
    def chunk_size(self) -> int:
        # About 50 chunks per second keeps the pace smooth without many tiny reads.
        if self.rate is None:
            return _MAX_CHUNK
        return int(min(max(self.rate / 50, _MIN_CHUNK), _MAX_CHUNK))

    def consumed(self, num_bytes: int) -> None:
        self.total += num_bytes
        if self.rate is not None:
            delay = self.start + self.total / self.rate - time.perf_counter()
            if delay > 0:
                if self.stop is not None:
                    if self.stop.wait(delay):
                        raise LoadingStopped
                else:
                    time.sleep(delay)
        if self.stop is not None and self.stop.is_set():
            raise LoadingStopped


@dataclass(frozen=True)
class FileEntry:
    """A file's size and sha256 as the manifest records them."""

    bytes: int
    sha256: str

    def to_json(self) -> dict[str, int | str]:
        return {"bytes": self.bytes, "sha256": self.sha256}


def read_file(path: Path, pacer: Pacer | None = None, keep: bool = True,
              digest: bool = True) -> tuple[bytes | None, str | None]:
    """Reads ``path`` in paced chunks.

    Returns:
        (the content if ``keep`` else None, the sha256 hex digest if ``digest`` else None).
    """
    pacer = pacer or Pacer()
    hasher = hashlib.sha256() if digest else None
    chunks: list[bytes] = []
    try:
        with open(path, "rb") as f:
            while chunk := f.read(pacer.chunk_size):
                if hasher is not None:
                    hasher.update(chunk)
                if keep:
                    chunks.append(chunk)
                pacer.consumed(len(chunk))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist (it went missing after the bundle was "
                              "opened); re-export the bundle") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    return (b"".join(chunks) if keep else None), (hasher.hexdigest() if hasher else None)


def check_size(path: Path, entry: FileEntry) -> None:
    """Raises ``CheckpointError`` naming ``path`` if it is missing or not ``entry.bytes`` long."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the bundle's manifest lists it. Re-export "
                              "the bundle with `python -m pwl.export`")
    size = path.stat().st_size
    if size != entry.bytes:
        raise CheckpointError(f"{path} has {size} bytes but the manifest says {entry.bytes}; "
                              "the file is truncated or replaced, re-export the bundle")


def check_sha256(path: Path, entry: FileEntry, sha256: str) -> None:
    if sha256 != entry.sha256:
        raise CheckpointError(f"{path} has sha256 {sha256[:16]}... but the manifest says "
                              f"{entry.sha256[:16]}...; the file is corrupt, re-export the bundle")


def read_tensors(path: Path, entry: FileEntry, pacer: Pacer | None = None, mmap: bool = False,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose size and sha256 match ``entry``.

    Args:
        mmap: stream the file once for its hash, then read the tensors through
            safetensors' memory map; else parse the bytes read into memory.
    """
    check_size(path, entry)
    data, sha = read_file(path, pacer, keep=not mmap)
    check_sha256(path, entry, sha)
    try:
        if mmap:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "re-export the bundle") from None
    return {k: v.to(device) for k, v in tensors.items()}
