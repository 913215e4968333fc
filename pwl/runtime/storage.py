"""Reading weight files the way a deployment does: paced, hashed, plain or memory-mapped.

A bandwidth limit emulates slow storage or a network download: files are read
in chunks and the reader sleeps so that the bytes read since the start never
run ahead of the rate. A plain read pulls the file into memory and parses it
there; a memory-mapped read streams the file once (for the hash and the pace)
and then lets safetensors map it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes

from pwl.errors import CheckpointError

_MIN_CHUNK = 4 << 10
_MAX_CHUNK = 4 << 20
# A header lists names, shapes and offsets: kilobytes for any real shard. A larger
# length is a lie, refused before it is read or allocated.
MAX_HEADER = 16 << 20
# Element sizes of the safetensors dtypes; any other dtype name is refused.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2,
                      "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8,
                      "U64": 8, "F64": 8}
TORCH_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
                torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
                torch.float32: "F32", torch.int64: "I64", torch.float64: "F64"}


class LoadingStopped(Exception):
    """Raised inside a read when its stop event is set (``ProgressiveModel.close``)."""


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


def open_regular(path: Path) -> BinaryIO:
    """Opens a bundle file for reading, refusing a symbolic link or anything not a regular file.

    Checked on the open file itself, so a file swapped for a link (or a FIFO, which
    would never end) after the manifest was read is refused too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist (it went missing after the bundle was "
                              "opened); re-export the bundle") from None
    except OSError as e:
        if path.is_symlink():
            raise CheckpointError(f"{path} is a symbolic link; a bundle holds regular files "
                                  "only, copy the file into the bundle") from None
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path} is not a regular file; a bundle holds regular files "
                              "only, re-export the bundle")
    return os.fdopen(fd, "rb")


def read_file(path: Path, pacer: Pacer | None = None, keep: bool = True,
              digest: bool = True, limit: int | None = None,
              regular_only: bool = False) -> tuple[bytes | None, str | None]:
    """Reads ``path`` in paced chunks.

    Args:
        limit: read at most this many bytes plus one (a file that grew past the size the
            manifest gives is then caught by its size or hash, without reading on forever).
        regular_only: refuse a symbolic link or a non-regular file (bundle files).

    Returns:
        (the content if ``keep`` else None, the sha256 hex digest if ``digest`` else None).
    """
    pacer = pacer or Pacer()
    hasher = hashlib.sha256() if digest else None
    chunks: list[bytes] = []
    left = None if limit is None else limit + 1
    try:
        with (open_regular(path) if regular_only else open(path, "rb")) as f:
            if keep and pacer.rate is None:
                # Unpaced: one read into one buffer, without a chunk list to join.
                data = f.read(-1 if left is None else left)
                if hasher is not None:
                    hasher.update(data)
                pacer.consumed(len(data))
                return data, (hasher.hexdigest() if hasher else None)
            while left is None or left > 0:
                chunk = f.read(pacer.chunk_size if left is None else min(pacer.chunk_size, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
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
                 device: torch.device | str = "cpu",
                 expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None
                 ) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose size and sha256 match ``entry``.

    The header is checked (``parse_header``), and against ``expected`` when given,
    before any tensor is made from the data.

    Args:
        mmap: stream the file once for its hash, then read the tensors through
            safetensors' memory map; else parse the bytes read into memory.
        expected: name -> (shape, dtype) of every tensor the file must hold, and of
            no other.
    """
    check_size(path, entry)
    # Paced reads hash each chunk as it arrives, in the time the pace leaves idle.
    data, sha = read_file(path, pacer, keep=not mmap, limit=entry.bytes, regular_only=True)
    check_sha256(path, entry, sha)
    return _tensors(path, entry, data, mmap, device, expected)


def bytes_tensors(where: Path | str, entry: FileEntry, data: bytes,
                  device: torch.device | str = "cpu",
                  expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None
                  ) -> dict[str, torch.Tensor]:
    """The tensors of a file's bytes (already checked against ``entry``), header checked
    first; ``where`` names the file in errors."""
    return _tensors(where, entry, data, False, device, expected)


def _tensors(path: Path | str, entry: FileEntry, data: bytes | None, mmap: bool,
             device: torch.device | str,
             expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None
             ) -> dict[str, torch.Tensor]:
    """The tensors of a file after its header is checked (``data``: its bytes, or None to
    read them through safetensors' memory map)."""
    if data is None:
        with open_regular(path) as f:
            prefix = f.read(8)
            head = prefix + f.read(header_length(prefix, entry.bytes, path))
    else:
        head = data
    header = parse_header(head, entry.bytes, path)
    if expected is not None:
        check_header(header, expected, path)
    try:
        if mmap:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "re-export the bundle") from None
    if torch.device(device).type == "cpu":
        return tensors  # where safetensors made them: no per-tensor call
    return {k: v.to(device) for k, v in tensors.items()}


class TensorInfo(NamedTuple):
    """One tensor as a safetensors header describes it (offsets into the data section)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def header_length(prefix: bytes, file_size: int, path: Path) -> int:
    """The header length the first 8 bytes give (little-endian), checked against the file."""
    if len(prefix) < 8 or file_size < 8:
        raise CheckpointError(f"{path} is too short for a safetensors file; re-export the bundle")
    n = int.from_bytes(prefix[:8], "little")
    if not 2 <= n <= min(MAX_HEADER, file_size - 8):
        raise CheckpointError(f"{path}: safetensors header length {n} does not fit the file "
                              f"({file_size} bytes, at most {MAX_HEADER} of header); the file "
                              "is corrupt, re-export the bundle")
    return n


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: safetensors header {what}; the file is corrupt or forged, "
                           "re-export the bundle")


_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def _ints(value: object) -> bool:
    if type(value) is not list:
        return False
    for v in value:
        if type(v) is not int or v < 0:
            return False
    return True


def parse_header(head: bytes, file_size: int, path: Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors header, refused unless it describes the file exactly.

    Checks what safetensors' own format requires, before any tensor is made: a header
    length that fits, a JSON object of known dtypes and non-negative shapes, each
    tensor's byte range as long as its shape and dtype say, and ranges that tile the
    data section without overlap or gap.

    Args:
        head: the file's first bytes (at least the 8-byte length and the header).
        file_size: the size of the whole file.
    """
    n = header_length(head, file_size, path)
    if len(head) < 8 + n:
        raise _bad(path, f"needs {n} bytes but the file ends first")
    try:
        header = json.loads(head[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad(path, "is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "is not a JSON object")
    data_size = file_size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise _bad(path, "__metadata__ is not a map of strings")
            continue
        if not isinstance(info, dict) or info.keys() != _ENTRY_KEYS:
            raise _bad(path, f"entry {name[:80]!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _bad(path, f"gives {name[:80]!r} the unknown dtype {str(dtype)[:20]!r}")
        if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
            raise _bad(path, f"gives {name[:80]!r} a malformed shape or data_offsets")
        start, end = offsets
        if not start <= end <= data_size:
            raise _bad(path, f"puts {name[:80]!r} at bytes {start}..{end}, outside the "
                       f"{data_size} bytes of data")
        if end - start != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
            raise _bad(path, f"gives {name[:80]!r} {end - start} bytes but shape {shape} of "
                       f"{dtype} needs {math.prod(shape) * SAFETENSORS_DTYPES[dtype]}")
        tensors[name] = TensorInfo(dtype, tuple(shape), start, end)
    at = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != at:
            raise _bad(path, f"has {'overlapping' if info.start < at else 'gapped'} tensor "
                       f"data at byte {min(info.start, at)}")
        at = info.end
    if at != data_size:
        raise _bad(path, f"covers {at} of the {data_size} bytes of data")
    return tensors


def check_names(expected: Iterable[str], found: Iterable[str], source: Path | str) -> None:
    """Raises ``CheckpointError`` naming ``source`` unless ``found`` has exactly the
    ``expected`` tensor names; says how many are missing and unexpected, with an example."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0][:80]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0][:80]})")
        raise CheckpointError(f"{source} does not match the model in the manifest: "
                              + ", ".join(details))


def check_header(header: Mapping[str, TensorInfo],
                 expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 path: Path) -> None:
    """Raises ``CheckpointError`` unless ``header`` holds exactly the ``expected`` tensors
    (name -> (shape, dtype))."""
    check_names(expected.keys(), header.keys(), path)
    for name, (shape, dtype) in sorted(expected.items()):
        info = header[name]
        if info.shape != tuple(shape):
            raise CheckpointError(f"{path} does not match the model in the manifest: {name} "
                                  f"has shape {list(info.shape)}, the model {list(shape)}")
        if info.dtype != TORCH_DTYPES.get(dtype):
            raise CheckpointError(f"{path} does not match the model in the manifest: {name} "
                                  f"is {info.dtype}, the model {TORCH_DTYPES.get(dtype, dtype)}")
