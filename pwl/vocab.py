"""Character vocabularies of the language-model pairs: text <-> token ids.

A vocabulary is the string of its symbols; the id of a symbol is its position. It is
stored in the data config (``data.vocab``), so a run directory and a bundle carry it
with everything else they need. This module imports nothing but torch and numpy, so a
deployed app can encode a prompt without the training stack.
"""

from __future__ import annotations

import numpy as np
import torch

from pwl.errors import ConfigError, DataError


class CharVocab:
    """Symbols and their ids.

    Args:
        symbols: every symbol once; the id of ``symbols[i]`` is i.
        where: the config key the symbols came from, for errors.
    """

    def __init__(self, symbols: str, where: str = "data.vocab") -> None:
        if len(symbols) < 2 or len(set(symbols)) != len(symbols):
            raise ConfigError(f"{where} must list at least 2 distinct symbols, each once; "
                              f"got {len(symbols)} with {len(symbols) - len(set(symbols))} "
                              "repeated")
        self.symbols = symbols
        self.where = where
        self._codes = np.array([ord(c) for c in symbols], dtype=np.int64)
        self._order = np.argsort(self._codes)

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str, what: str = "the text") -> torch.Tensor:
        """Token ids (len(text),) int64 of ``text``.

        Raises:
            DataError: ``what`` holds a symbol outside the vocabulary (names the first).
        """
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        sorted_codes = self._codes[self._order]
        pos = np.searchsorted(sorted_codes, codes).clip(max=len(sorted_codes) - 1)
        bad = np.flatnonzero(sorted_codes[pos] != codes)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{what} holds {text[i]!r} (position {i}), which is not in "
                            f"{self.where}; remove it or add it to the vocabulary")
        return torch.from_numpy(self._order[pos])

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The text of token ids (any shape, read in order)."""
        flat = torch.as_tensor(ids).reshape(-1).tolist()
        return "".join(self.symbols[i] for i in flat)
