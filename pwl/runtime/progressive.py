"""ProgressiveModel: answers from the student at once, better as teacher blocks arrive.

``open`` reads the manifest and the student file only (from a directory or a
URL, ``pwl.runtime.sources``), and builds the student
alone: the first answer costs what the student alone costs. ``start_loading``
builds the teacher on the meta device (its weights take no memory until their
block is loaded) and, in a background thread, reads the adapters' file and then
the teacher blocks in the loading order; after each block is materialised the
model swaps to the next mask.

Swaps are atomic: a prediction takes the current snapshot (an immutable mask
plus a count of predictions running on it) under a lock, runs wholly on that
mask, and a swap only publishes a new snapshot. Teacher block i is materialised
before the swap while no published mask uses it. After a swap, student blocks
and adapters that no mask left in the loading order uses are freed (their
tensors moved to meta). They are freed only once every prediction still
running on the previous snapshot has finished: the loader waits for that
count to drop to zero, which costs it at most one prediction's time, whereas
freeing under a running prediction would crash it or mix masks.

With ``connections=k`` the loader reads up to k files ahead at once, each on its own
request (a server such as nginx limits the rate of each connection), and still swaps them
in the loading order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pwl.blocks import BlockNet
from pwl.build import check_saved_model_cfg
from pwl.config import parse_bandwidth
from pwl.errors import CheckpointError, ConfigError, PWLError
from pwl.hybrid import HybridNet
from pwl.masks import LoadingOrder, parts_needed, teacher_blocks
from pwl.runtime.bundle import ADAPTERS_FILE, FIX, MANIFEST, STUDENT_FILE, Manifest, read_manifest
from pwl.runtime.materialise import build_empty, build_on_meta, file_parts, load_file
from pwl.runtime.sources import (
    DEFAULT_DEADLINE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Source,
    open_source,
)
from pwl.runtime.storage import LoadingStopped, Pacer


@dataclass(frozen=True)
class LoadEvent:
    """One step of loading: the student at open, then one teacher block per swap.

    Attributes:
        stage: teacher blocks in use after this event (k of ``mask``).
        mask: the mask predictions run on from this event on.
        block: the teacher block swapped in (None for the student at open).
        t: seconds since ``open`` started, when the event happened.
        bytes_read: bytes read from the bundle for this step.
        seconds: time the step took (reading, checking, materialising).
        error: why loading stopped at this step, else None.
    """

    stage: int
    mask: str
    block: int | None
    t: float
    bytes_read: int
    seconds: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _ReadAhead:
    """Reads a bundle's files ahead, up to ``connections`` at once, in the order given."""

    def __init__(self, source: Source, manifest: Manifest, rels: list[str], pacer: Pacer,
                 connections: int) -> None:
        self._source, self._manifest, self._pacer = source, manifest, pacer
        self._pending = list(rels)
        self._reads: dict[str, Future[bytes]] = {}
        self._connections = connections
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="pwl-read")
        self._fill()

    def _fill(self) -> None:
        while self._pending and len(self._reads) < self._connections:
            rel = self._pending.pop(0)
            self._reads[rel] = self._pool.submit(self._source.read, rel,
                                                 self._manifest.entry(rel), self._pacer)

    def take(self, rel: str) -> bytes:
        """File ``rel``'s checked bytes, once read; the next file starts reading."""
        data = self._reads.pop(rel).result()
        self._fill()
        return data

    def close(self) -> None:
        """Stops starting reads; those running end at their next chunk (the pacer's stop)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Snapshot:
    """A mask predictions run on, and how many predictions are running on it."""

    __slots__ = ("mask", "active")

    def __init__(self, mask: str) -> None:
        self.mask = mask
        self.active = 0


def next_tokens(step: Callable[[torch.Tensor], tuple[torch.Tensor, str]], tokens: list[int],
                max_new_tokens: int, window: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[list[int], list[str]]:
    """``max_new_tokens`` tokens after ``tokens``, and the mask each was produced on.

    ``step(x)`` gives the logits (1, T, vocab) of the token ids ``x`` (1, T) and the mask
    that produced them; each token is one step on the last ``window`` tokens, greedy at
    temperature 0, else sampled from the softmax of logits / temperature with ``generator``.
    """
    tokens = list(tokens)
    new, masks = [], []
    for _ in range(max_new_tokens):
        logits, mask = step(torch.tensor([tokens[-window:]], dtype=torch.long))
        last = logits[0, -1].float().cpu()
        if temperature == 0:
            token = int(last.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(last / temperature, dim=-1), 1,
                                          generator=generator))
        tokens.append(token)
        new.append(token)
        masks.append(mask)
    return new, masks


class ProgressiveModel:
    """A bundle that answers from the student at once and loads teacher blocks in the background.

    Create it with ``ProgressiveModel.open(bundle)``.
    """

    def __init__(self, source: Source, manifest: Manifest, student: BlockNet,
                 device: torch.device, bandwidth: float | None, mmap: bool,
                 started: float, connections: int = 1) -> None:
        self.source = source
        self.bundle = source.location
        self.manifest = manifest
        self.device = device
        self.bandwidth = bandwidth
        self.mmap = mmap
        self.connections = connections
        self._read_ahead: _ReadAhead | None = None
        self._student = student
        # Built (teacher on meta, adapters unread) when loading starts: the first answer
        # needs the student only.
        self._hybrid: HybridNet | None = None
        self._build_lock = threading.Lock()
        self._started = started
        self._cond = threading.Condition()
        self._snapshot = _Snapshot("S" * student.num_blocks)
        self._events: list[LoadEvent] = []
        self._order: list[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._error: PWLError | None = None
        self._freed_student: set[int] = set()
        self._freed_adapters: set[tuple[str, int]] = set()

    @classmethod
    def open(cls, bundle: str | Path | Source, *, bandwidth: float | str | None = None,
             mmap: bool = False, device: str | torch.device = "cpu",
             cache_dir: str | Path | bool | None = None, timeout: float = DEFAULT_TIMEOUT,
             deadline: float | None = DEFAULT_DEADLINE, retries: int = DEFAULT_RETRIES,
             ca_bundle: str | Path | None = None, connections: int = 1) -> ProgressiveModel:
        """Opens a bundle: reads the manifest and the student file, and builds the student.

        Args:
            bundle: the bundle directory, or its URL (``https://host/path/bundle/``, or any
                fsspec URL whose filesystem is installed, e.g. ``s3://``), or a ``Source``
                (e.g. a ``URLSource`` with fsspec ``storage_options`` such as credentials;
                the URL arguments below then do not apply).
            bandwidth: bytes per second to hold every read to (number or "50MB"); None: no
                limit. Over a URL it comes on top of the link's own rate.
            mmap: read a directory's tensors through a memory map instead of into memory.
            device: where the model runs.
            cache_dir: URLs only. None (the default) or False: no cache, nothing is
                written; True: ``pwl/bundles`` under the user's cache directory
                (platformdirs); a path: that directory. Verified files are kept there by
                sha256, and a later open fetches only what the cache lacks.
            timeout: URLs: seconds to connect and between two reads of one response.
            deadline: URLs: seconds from now for the whole load; None: none.
            retries: URLs: further requests for one file after transient failures.
            ca_bundle: https: a PEM file of the certificate authorities to verify against.
            connections: files read at once while loading, each on its own request (a
                server that limits each connection's rate, such as nginx, then gives k times
                the rate); blocks still swap in the loading order. A ``bandwidth`` limit is
                shared by them all.

        Raises:
            CheckpointError: naming the file or URL, if the manifest does not match the files
                (a missing file, a wrong size, the student's sha256, N) or a download fails.
        """
        started = time.perf_counter()
        if int(connections) < 1:
            raise ConfigError(f"connections={connections} must be at least 1")
        device = torch.device(device)
        rate = parse_bandwidth(bandwidth)
        source = open_source(bundle, cache_dir=cache_dir, timeout=timeout, deadline=deadline,
                             retries=retries, ca_bundle=ca_bundle)
        manifest = read_manifest(source)
        where = source.where(MANIFEST)
        check_saved_model_cfg(manifest.model, where)
        student = build_on_meta(manifest.model["student"], "student", where)
        if student.num_blocks != manifest.num_blocks:
            raise CheckpointError(f"{where} says N={manifest.num_blocks} but its model config "
                                  f"builds a student of N={student.num_blocks} blocks; {FIX}")
        size = load_file(source, manifest, STUDENT_FILE, file_parts(student, STUDENT_FILE),
                         Pacer(rate), mmap, device)
        model = cls(source, manifest, student.eval(), device, rate, mmap, started,
                    int(connections))
        model._record(LoadEvent(0, model.mask, None, model.elapsed(), size, model.elapsed()))
        return model

    @property
    def num_blocks(self) -> int:
        return self._student.num_blocks

    @property
    def hybrid(self) -> HybridNet:
        """The underlying hybrid; blocks not loaded (teacher, adapters) or freed (student)
        are on meta. Built on first use: the first answer needs the student only."""
        with self._build_lock:
            if self._hybrid is None:
                self._hybrid = build_empty(self.manifest, self.source.where(MANIFEST),
                                           self._student).eval()
            return self._hybrid

    @property
    def mask(self) -> str:
        """The mask the next prediction runs on."""
        return self._snapshot.mask

    @property
    def stage(self) -> int:
        """How many teacher blocks the current mask uses."""
        return teacher_blocks(self.mask)

    @property
    def loading_order(self) -> list[str] | None:
        """The masks of the loading in progress (None before ``start_loading``)."""
        return list(self._order) if self._order is not None else None

    @property
    def events(self) -> list[LoadEvent]:
        with self._cond:
            return list(self._events)

    @property
    def done(self) -> bool:
        """True when loading has finished, failed or was stopped."""
        return self._done.is_set()

    @property
    def error(self) -> PWLError | None:
        return self._error

    def elapsed(self) -> float:
        """Seconds since ``open`` started (the clock of the events)."""
        return time.perf_counter() - self._started

    def resident_bytes(self) -> int:
        """Bytes of the parameters and buffers held in memory (not on meta)."""
        net = self._hybrid if self._hybrid is not None else self._student
        tensors = [*net.parameters(), *net.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)

    def predict_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Logits (B, num_classes) of images (B, C, H, W), and the mask that produced them."""
        with self._cond:
            snapshot = self._snapshot
            snapshot.active += 1
        try:
            hybrid = self._hybrid
            with torch.no_grad():
                # Before the hybrid is built, no swap has happened: the mask is all-student.
                logits = (hybrid(x.to(self.device), snapshot.mask) if hybrid is not None
                          else self._student(x.to(self.device)))
        finally:
            with self._cond:
                snapshot.active -= 1
                if snapshot.active == 0:
                    self._cond.notify_all()
        return logits, snapshot.mask

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, C, H, W) under the current mask."""
        return self.predict_with_mask(x)[0]

    __call__ = predict

    def generate_with_masks(self, prompt: str, max_new_tokens: int, *, seed: int | None = None,
                            temperature: float = 0.0) -> tuple[str, list[str]]:
        """The continuation of ``prompt`` by a language-model bundle, and the mask of each token.

        Each token is one prediction: it runs wholly on one mask (a swap between tokens
        changes the next token's mask, never a token's own). The window is the last
        ``context_length`` tokens of prompt and continuation.

        Args:
            prompt: text over the bundle's vocabulary (``data.vocab`` of its manifest).
            max_new_tokens: how many tokens to add.
            seed: the sampler's seed (``temperature > 0``); None draws from torch's RNG.
            temperature: 0 picks the most likely token; above 0 samples from the softmax of
                logits / temperature.

        Raises:
            ConfigError: the bundle is no language model, or a bad argument.
            DataError: the prompt holds a symbol outside the vocabulary (names it).
        """
        from pwl.errors import ConfigError
        from pwl.vocab import CharVocab

        symbols = (self.manifest.data or {}).get("vocab")
        if self._student.task != "language_model" or not symbols:
            raise ConfigError(f"{self.bundle} holds no language model with a vocabulary; "
                              "generate() needs a bundle exported from a data=kjv run")
        if max_new_tokens < 0 or temperature < 0:
            raise ConfigError("max_new_tokens and temperature must be >= 0")
        vocab = CharVocab(symbols, f"{self.bundle}'s data.vocab")
        tokens = vocab.encode(prompt, "the prompt").tolist()
        if not tokens:
            raise ConfigError("the prompt is empty; give at least one character")
        window = int(self.manifest.model["teacher"]["context_length"])
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        new, masks = next_tokens(self.predict_with_mask, tokens, max_new_tokens, window,
                                 temperature, generator)
        return prompt + vocab.decode(new), masks

    def generate(self, prompt: str, max_new_tokens: int, *, seed: int | None = None,
                 temperature: float = 0.0) -> str:
        """``prompt`` and its continuation (see ``generate_with_masks``)."""
        return self.generate_with_masks(prompt, max_new_tokens, seed=seed,
                                        temperature=temperature)[0]

    def start_loading(self, order: LoadingOrder | None = None) -> list[str]:
        """Starts loading teacher blocks in a background thread.

        Args:
            order: None (the bundle's default), ``"prefix"``, ``"suffix"``, a list
                of block indices or a list of masks (see ``LoadingOrder.parse``).

        Returns:
            the masks the model will pass through, the current one first.
        """
        if self._thread is not None:
            raise RuntimeError("start_loading was already called on this model")
        order = LoadingOrder.parse(self.manifest.loading_order if order is None else order,
                                   self.num_blocks)
        blocks, masks = order.blocks, list(order.masks)
        self._order = masks
        self.hybrid  # noqa: B018 - builds it (teacher on meta) before any swap
        self._thread = threading.Thread(target=self._load, args=(masks, blocks), name="pwl-loader",
                                        daemon=True)
        self._thread.start()
        return list(masks)

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for loading to end; True if it has (also when it never started).

        Raises:
            PWLError: the error that stopped loading (``CheckpointError`` for a bad file).
        """
        if self._thread is None:
            return True
        finished = self._done.wait(timeout)
        if finished and self._error is not None:
            raise self._error
        return finished

    def close(self) -> None:
        """Stops loading (between chunks or blocks) and waits for the loader to exit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ProgressiveModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, event: LoadEvent) -> None:
        with self._cond:
            self._events.append(event)

    def _load(self, masks: list[str], blocks: list[int]) -> None:
        pacer = Pacer(self.bandwidth, self._stop)
        if self.connections > 1:
            self._read_ahead = _ReadAhead(
                self.source, self.manifest,
                [ADAPTERS_FILE, *(self.manifest.block_file(b) for b in blocks)], pacer,
                self.connections)
        try:
            for step, (block, mask) in enumerate(zip(blocks, masks[1:]), start=1):
                if self._stop.is_set():
                    return
                began = time.perf_counter()
                rel = self.manifest.block_file(block)
                try:
                    size = 0
                    if step == 1:  # the first step brings the adapters too
                        size += self._load_file(ADAPTERS_FILE, pacer)
                        self._free_unused(masks)
                    size += self._load_file(rel, pacer)
                except LoadingStopped:
                    return
                except PWLError as e:
                    self._fail(e, block)
                    return
                except Exception as e:  # any other failure still must not kill the model
                    self._fail(CheckpointError(f"loading {self.source.where(rel)} failed: "
                                               f"{type(e).__name__}: {e}"), block)
                    return
                self._swap(mask, masks[step:])
                self._record(LoadEvent(teacher_blocks(mask), mask, block, self.elapsed(),
                                       size, time.perf_counter() - began))
        finally:
            if self._read_ahead is not None:
                self._stop.set()  # reads still running ahead end at their next chunk
                self._read_ahead.close()
            self._done.set()

    def _load_file(self, rel: str, pacer: Pacer) -> int:
        data = self._read_ahead.take(rel) if self._read_ahead is not None else None
        return load_file(self.source, self.manifest, rel, file_parts(self._hybrid, rel), pacer,
                         self.mmap, self.device, data)

    def _fail(self, error: PWLError, block: int) -> None:
        self._error = error
        mask = self.mask
        # Loading ends here, so only the current mask will ever run again.
        self._free_unused([mask])
        self._record(LoadEvent(teacher_blocks(mask), mask, block, self.elapsed(), 0, 0.0,
                               str(error)))

    def _swap(self, mask: str, remaining: list[str]) -> None:
        with self._cond:
            old = self._snapshot
            self._snapshot = _Snapshot(mask)
            self._cond.wait_for(lambda: old.active == 0)
        self._free_unused(remaining)

    def _free_unused(self, remaining: list[str]) -> None:
        """Moves to meta the student blocks and adapters no mask in ``remaining`` uses."""
        _, student_needed, adapters_needed = parts_needed(remaining)
        for i in range(self.num_blocks):
            if i not in student_needed and i not in self._freed_student:
                for module in self._hybrid.student.unit_modules(i):
                    module.to_empty(device="meta")
                self._freed_student.add(i)
        for kind in ("to_student", "to_teacher"):
            for b, adapter in enumerate(getattr(self._hybrid.adapters, kind)):
                key = (kind, b)
                if key not in adapters_needed and key not in self._freed_adapters:
                    adapter.to_empty(device="meta")
                    self._freed_adapters.add(key)
