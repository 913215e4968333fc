"""Character-level text: the King James Bible (Debian's ``bible-kjv``) or a synthetic corpus.

The text is split by whole books with a fixed rule: of the books in canonical order
(66 for the KJV), index ``i % 11 == 5`` goes to validation, ``i % 11 == 10`` to test,
the rest to training. Each book is its verses, one per line, without references.
A batch is (tokens (B, L), next tokens (B, L)), int64, with L = ``context_length``.
Training draws windows at random offsets; validation and test read their split in
consecutive non-overlapping windows, so every character but the first of a window is
scored once.

``bible -f Gen1:1-Rev22:21`` prints the whole text; it is read once into
``<cache_dir>/kjv/books.json``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset

from pwl.atomic import atomic_write_text
from pwl.config import Schema
from pwl.data.datamodule import Batch, DataModule, PathStr, register_data
from pwl.errors import ConfigError, DataError
from pwl.vocab import CharVocab

# The 63 symbols of the KJV text (newline, space, punctuation, digits, letters).
KJV_VOCAB = "\n !'(),-.:;?ABCDEFGHIJKLMNOPQRSTUVWYZabcdefghijklmnopqrstuvwxyz"
HOW_TO_GET = ("install it with `sudo apt-get install bible-kjv` (Debian/Ubuntu), or pass "
              "data.source=synthetic for a small generated corpus")
VERSE = re.compile(r"^(\d?[A-Za-z]+)\d+:\d+ (.*)$")
# A split's share of the books: index % SPLIT_EVERY picks validation and test books.
SPLIT_EVERY, VAL_AT, TEST_AT = 11, 5, 10
MAX_CONTEXT = 1 << 16

SYNTHETIC_WORDS = ("and the of that to in he shall unto for his a lord they be is him not "
                   "them it with all thou thy was god which my me said but ye their have "
                   "will thee from as are when this out were upon man by you israel king "
                   "son up there hath then people came had house into on her come one we "
                   "children before your also day land men against shalt if").split()


def read_kjv(program: str | None = None) -> dict[str, str]:
    """Book abbreviation -> its verses, one per line, from the ``bible`` program.

    Raises:
        DataError: the program is missing or printed no verses.
    """
    program = program or shutil.which("bible")
    if program is None:
        raise DataError(f"the King James Bible is not installed (no `bible` program); "
                        f"{HOW_TO_GET}")
    out = subprocess.run([program, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                         check=False)
    books: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        m = VERSE.match(line)
        if m:
            books.setdefault(m.group(1), []).append(m.group(2))
    if out.returncode or not books:
        raise DataError(f"`{program} -f Gen1:1-Rev22:21` printed no verses (exit "
                        f"{out.returncode}); reinstall bible-kjv")
    return {book: "\n".join(verses) + "\n" for book, verses in books.items()}


def synthetic_books(num_books: int, chars_per_book: int, seed: int) -> dict[str, str]:
    """Books of sentences drawn from a fixed word list: learnable, within ``KJV_VOCAB``."""
    rng = random.Random(seed)
    books = {}
    for b in range(num_books):
        lines, size = [], 0
        while size < chars_per_book:
            words = [rng.choice(SYNTHETIC_WORDS) for _ in range(rng.randint(4, 12))]
            line = " ".join(words).capitalize() + rng.choice(".;:,")
            lines.append(line)
            size += len(line) + 1
        books[f"book{b}"] = "\n".join(lines) + "\n"
    return books


def split_books(books: dict[str, str]) -> dict[str, str]:
    """The train, val and test texts: whole books by their index (see the module docstring)."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, text in enumerate(books.values()):
        at = i % SPLIT_EVERY
        parts["val" if at == VAL_AT else "test" if at == TEST_AT else "train"].append(text)
    return {split: "".join(texts) for split, texts in parts.items()}


class TrainWindows(Dataset):
    """Windows of ``length + 1`` ids at random offsets; ``num`` per epoch."""

    def __init__(self, ids: torch.Tensor, length: int, num: int) -> None:
        self.ids, self.length, self.num = ids, length, num

    def __len__(self) -> int:
        return self.num

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.ids) - self.length, (len(indices),))
        return _windows(self.ids, starts, self.length)


class EvalWindows(Dataset):
    """Consecutive non-overlapping windows covering the text (a last partial one dropped)."""

    def __init__(self, ids: torch.Tensor, length: int) -> None:
        self.ids, self.length = ids, length
        self.starts = torch.arange(0, len(ids) - length, length)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.ids, self.starts[torch.as_tensor(indices)], self.length)


def _windows(ids: torch.Tensor, starts: torch.Tensor,
             length: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = ids[starts[:, None] + torch.arange(length + 1)]
    return window[:, :-1], window[:, 1:]


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class TextArgs(Schema):
    """The arguments of ``kjv`` a stored data config may give."""

    source: Literal["kjv", "synthetic"] = "kjv"
    cache_dir: PathStr = "data"
    vocab: str = Field(KJV_VOCAB, min_length=2, max_length=4096)
    num_classes: int | None = Field(None, ge=2, le=4096)
    context_length: int = Field(128, ge=1, le=MAX_CONTEXT)
    batch_size: Batch = 64
    eval_batch_size: Batch | None = None
    seed: int = 0
    num_workers: int = Field(0, ge=0, le=256)
    limit_train: int | None = Field(None, ge=1, le=1 << 30)
    synthetic_books: int = Field(22, ge=11, le=10_000)
    synthetic_chars: int = Field(4000, ge=16, le=1 << 24)


@register_data(TextArgs, name="kjv")
class TextDataModule(DataModule):
    """Character-level text split by whole books; batches of (tokens, next tokens).

    Args:
        source: ``kjv`` (the ``bible`` program of Debian's bible-kjv) or ``synthetic``
            (``synthetic_books`` books of about ``synthetic_chars`` characters each,
            sentences from a fixed word list; for tests, no package needed).
        cache_dir: the KJV text is extracted once into ``<cache_dir>/kjv/books.json``.
        vocab: the symbols, in id order; the run's config keeps them.
        num_classes: the vocabulary size the model's head is built for; must equal
            ``len(vocab)`` (default: that).
        context_length: tokens per window (L).
        batch_size: windows per training batch.
        eval_batch_size: windows per validation/test batch (default ``batch_size``).
        seed: of the synthetic corpus (the splits are fixed).
        limit_train: training windows per epoch (default: the training characters / L).
    """

    name = "kjv"

    def __init__(self, source: str = "kjv", cache_dir: str = "data", vocab: str = KJV_VOCAB,
                 num_classes: int | None = None, context_length: int = 128,
                 batch_size: int = 64, eval_batch_size: int | None = None, seed: int = 0,
                 num_workers: int = 0, limit_train: int | None = None,
                 synthetic_books: int = 22, synthetic_chars: int = 4000) -> None:
        super().__init__()
        if source not in ("kjv", "synthetic"):
            raise ConfigError(f"data.source={source!r} is unknown; use kjv or synthetic")
        self.vocab = CharVocab(vocab)
        if num_classes is not None and num_classes != len(vocab):
            raise ConfigError(f"data.num_classes={num_classes} but data.vocab has "
                              f"{len(vocab)} symbols; set data.num_classes={len(vocab)}")
        if context_length < 1:
            raise ConfigError(f"data.context_length={context_length} must be >= 1")
        self.source = source
        self.cache_dir = cache_dir
        self.num_classes = len(vocab)
        self.context_length = context_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.limit_train = limit_train
        self.synthetic_books = synthetic_books
        self.synthetic_chars = synthetic_chars
        self.ids: dict[str, torch.Tensor] = {}

    @property
    def input_shape(self) -> tuple[int]:
        return (self.context_length,)

    def books(self) -> dict[str, str]:
        """Book name -> text, in canonical order."""
        if self.source == "synthetic":
            return synthetic_books(self.synthetic_books, self.synthetic_chars, self.seed)
        cache = Path(self.cache_dir) / "kjv" / "books.json"
        if cache.is_file():
            try:
                return json.loads(cache.read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read {cache} ({e}); delete it to extract the text "
                                "again") from None
        books = read_kjv()
        atomic_write_text(cache, json.dumps(books))
        return books

    def setup(self, stage: str | None = None) -> None:
        if self.ids:
            return
        texts = split_books(self.books())
        for split, text in texts.items():
            ids = self.vocab.encode(text, f"the {self.source} {split} text")
            if len(ids) <= self.context_length:
                raise ConfigError(f"data.context_length={self.context_length} leaves no "
                                  f"window in the {split} text ({len(ids)} characters); "
                                  "lower it or use a larger corpus")
            self.ids[split] = ids

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        if split == "train":
            num = len(self.ids["train"]) // self.context_length
            dataset: Dataset = TrainWindows(self.ids["train"], self.context_length,
                                            min(num, self.limit_train or num))
        else:
            dataset = EvalWindows(self.ids[split], self.context_length)
        train = split == "train"
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train, drop_last=train, collate_fn=_whole_batch,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def preprocess(self, inputs: torch.Tensor, train: bool) -> torch.Tensor:
        """Tokens need no preprocessing."""
        return inputs
