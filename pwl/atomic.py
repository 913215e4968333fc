"""Files written whole or not at all: a temporary name in the same folder, then a rename.

A run or an export killed mid-write leaves the old file or the new one, never a
truncated file that looks complete.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically; creates the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_dataclass_csv(rows: Iterable[Any], row_type: type, path: str | Path,
                        columns: Sequence[str] | None = None) -> Path:
    """Writes dataclass ``rows`` as a CSV with a header of the field names (None as empty)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(columns or [f.name for f in fields(row_type)])
    writer.writerows(["" if v is None else v for v in astuple(r)] for r in rows)
    return atomic_write_text(path, buf.getvalue())
