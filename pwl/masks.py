"""The mask vocabulary: which network runs each block, and how masks follow each other.

A mask is a string over {S,T} of length N, block 0 first: ``"TTSS"`` runs the
teacher's first two blocks and the student's last two. Everything that reasons
about masks lives here: validation, the loading orders (prefix, suffix, window,
all), the masks the cross-path loss trains on, random mixed masks, which adapters
a mask runs through and the bytes it loads. The rule "an adapter converts the
feature where the network switches" is ``adapter_between``; ``HybridNet.step``
applies it.

A loading order has one form, ``LoadingOrder`` (a name and its masks), made once
by ``LoadingOrder.parse`` from whatever a config, a file or a caller gives, and
one vocabulary of names, ``ORDERS``: every config key, file column and table
says ``prefix``, ``suffix``, ``window``, ``all``, ``plan`` or ``custom``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pwl.errors import ConfigError, MaskError

# The one vocabulary of orders, used by every config key, file column and table.
NAMED_ORDERS = ("prefix", "suffix", "window", "all")
PLAN = "plan"
CUSTOM = "custom"
ORDERS = (*NAMED_ORDERS, PLAN, CUSTOM)
TO = {"T": "to_teacher", "S": "to_student"}


def validate_mask(mask: str, num_blocks: int) -> str:
    """Returns ``mask`` if it is a string over {S,T} of length ``num_blocks``."""
    if not isinstance(mask, str):
        raise MaskError(f"mask must be a string over {{S,T}}, got {type(mask).__name__} {mask!r}")
    bad = sorted(set(mask) - {"S", "T"})
    if bad:
        raise MaskError(f"mask {mask!r} has letters {bad}; use only 'S' (student) and "
                        "'T' (teacher)")
    if len(mask) != num_blocks:
        raise MaskError(f"mask {mask!r} has length {len(mask)} but the model has "
                        f"N={num_blocks} blocks")
    return mask


def is_mask(entry: object) -> bool:
    """True for a non-empty string over {S,T} (of any length)."""
    return isinstance(entry, str) and bool(entry) and set(entry) <= {"S", "T"}


def teacher_blocks(mask: str) -> int:
    """k: the number of teacher blocks in a mask."""
    return mask.count("T")


def order_key(mask: str) -> tuple[int, str]:
    """Sorts masks by k, then with teacher blocks nearer the input first."""
    return teacher_blocks(mask), mask[::-1]


def adapter_between(prev: str | None, who: str) -> str | None:
    """The adapter that runs between a block of ``prev`` and the next block of ``who``.

    Returns ``"to_teacher"``/``"to_student"`` where the network switches, None where it
    does not (or at the input, ``prev=None``). This is the one place the rule lives.
    """
    return TO[who] if prev is not None and prev != who else None


def first_switch(mask: str) -> int | None:
    """The first block that runs on the other network than block 0, or None if none does."""
    return next((i for i, who in enumerate(mask) if who != mask[0]), None)


def adapters_used(mask: str) -> set[tuple[str, int]]:
    """The adapters ``("to_teacher" | "to_student", boundary)`` a mask runs through."""
    used = set()
    for b in range(len(mask) - 1):
        kind = adapter_between(mask[b], mask[b + 1])
        if kind is not None:
            used.add((kind, b))
    return used


def masks_for_order(order: str, num_blocks: int) -> list[str]:
    """Masks in loading order, from the student (k=0) to the teacher (k=N).

    prefix: teacher blocks from the input side (``TSSS``, ``TTSS``...).
    suffix: teacher blocks from the output side (``SSST``, ``SSTT``...).
    window: every contiguous run of teacher blocks, shortest first.
    all: every one of the 2^N masks, ordered by k.
    """
    n = num_blocks
    if order == "prefix":
        return ["T" * k + "S" * (n - k) for k in range(n + 1)]
    if order == "suffix":
        return ["S" * (n - k) + "T" * k for k in range(n + 1)]
    if order == "window":
        runs = ["S" * start + "T" * k + "S" * (n - start - k)
                for k in range(1, n + 1) for start in range(n - k + 1)]
        return ["S" * n, *runs]
    if order == "all":
        return sorted(("".join(m) for m in itertools.product("ST", repeat=n)), key=order_key)
    raise MaskError(f"loading order {order!r} is unknown; use one of {list(NAMED_ORDERS)}")


def prefix_masks(num_blocks: int) -> list[str]:
    """Every ``T^k S^(N-k)`` with 0 < k < N: the prefix order without its pure ends."""
    return masks_for_order("prefix", num_blocks)[1:-1]


def suffix_masks(num_blocks: int) -> list[str]:
    """Every ``S^(N-k) T^k`` with 0 < k < N: the suffix order without its pure ends."""
    return masks_for_order("suffix", num_blocks)[1:-1]


def random_mixed_mask(num_blocks: int) -> str:
    """A mask with both S and T blocks, from the global torch RNG (which Lightning seeds).

    Half of the time a single switch point (a prefix or suffix mask, uniformly),
    otherwise any mask that is neither all-S nor all-T, uniformly.
    """
    if torch.rand(()).item() < 0.5:
        single = prefix_masks(num_blocks) + suffix_masks(num_blocks)
        return single[torch.randint(len(single), (1,)).item()]
    while True:
        bits = torch.randint(2, (num_blocks,)).tolist()
        if 0 < sum(bits) < num_blocks:
            return "".join("T" if b else "S" for b in bits)


def _added_blocks(masks: Sequence[str]) -> list[int] | None:
    """The teacher block each step of ``masks`` adds (all-student first), or None unless
    every step adds exactly one."""
    if not masks or "T" in masks[0]:
        return None
    blocks = []
    for prev, mask in itertools.pairwise(masks):
        changed = [i for i, (a, b) in enumerate(zip(prev, mask)) if a != b]
        if len(changed) != 1 or mask[changed[0]] != "T":
            return None
        blocks.append(changed[0])
    return blocks


@dataclass(frozen=True)
class LoadingOrder:
    """A named sequence of masks: the one form of a loading order.

    ``name`` is one of ``ORDERS``: ``prefix``, ``suffix`` (whatever form gave their
    masks), ``window``, ``all``, ``plan`` (a loading plan, ``pwl.plan``) or ``custom``
    (block indices or masks of no other name). A *loadable* order starts at the
    student and adds one teacher block per step (prefix, suffix, plan, block indices,
    such masks); window, all and loose masks are sets of masks to evaluate.
    """

    name: str
    masks: tuple[str, ...]

    @classmethod
    def parse(cls, value: Any, num_blocks: int, plan: Sequence[str] | None = None
              ) -> LoadingOrder:
        """The order a config, file or caller gives, checked against N.

        Args:
            value: a name (``prefix``, ``suffix``, ``window``, ``all``, ``plan``), a list
                of block indices in loading order (``[0, 2, 1]``), a list of masks each
                adding one teacher block (all-student first, added if left out), or a
                ``LoadingOrder``. A partial order ends before all-teacher.
            num_blocks: N.
            plan: the masks of the loading plan, for ``value="plan"``.

        Raises:
            MaskError: the value is none of these, or does not fit N (naming it).
        """
        n = num_blocks
        if isinstance(value, LoadingOrder):
            for mask in value.masks:
                validate_mask(mask, n)
            return value
        if isinstance(value, str):
            if value == PLAN:
                if plan is None:
                    raise MaskError("loading order plan needs a loading plan; run `python -m "
                                    "pwl.plan checkpoint=<run>` first")
                return cls(PLAN, cls.parse(list(plan), n).masks)
            if value not in NAMED_ORDERS:
                raise MaskError(f"loading order {value!r} is unknown; use one of "
                                f"{[*NAMED_ORDERS, PLAN]}, block indices or masks")
            return cls(value, tuple(masks_for_order(value, n)))
        items = list(value)
        if items and all(isinstance(m, str) for m in items):
            masks = [validate_mask(m, n) for m in items]
            if masks[0] != "S" * n:
                masks.insert(0, "S" * n)
            if _added_blocks(masks) is None:
                raise MaskError(f"loading order {items} must add exactly one teacher block "
                                "per step, from all-student on")
        elif items and all(isinstance(b, int) and not isinstance(b, bool) for b in items):
            if any(not 0 <= b < n for b in items) or len(set(items)) != len(items):
                raise MaskError(f"loading order {items} must name distinct blocks in "
                                f"[0, {n - 1}]")
            masks, current = ["S" * n], ["S"] * n
            for b in items:
                current[b] = "T"
                masks.append("".join(current))
        else:
            raise MaskError(f"loading order {items!r} is neither a name, block indices "
                            "[0, 1, ...] nor masks ['TSSS', 'TTSS', ...]")
        named = next((name for name in ("prefix", "suffix")
                      if masks == masks_for_order(name, n)), CUSTOM)
        return cls(named, tuple(masks))

    @property
    def blocks(self) -> list[int]:
        """The teacher block each step adds, in loading order.

        Raises:
            MaskError: the order is not loadable (window, all, loose masks).
        """
        blocks = _added_blocks(self.masks)
        if blocks is None:
            raise MaskError(f"loading order {self.name} cannot be loaded block by block; use "
                            "prefix, suffix, a plan, block indices or masks each adding one "
                            "teacher block")
        return blocks


def parse_orders(value: Any, num_blocks: int) -> list[LoadingOrder]:
    """The orders of an evaluation: names, lists (as ``LoadingOrder.parse``) and masks.

    Loose masks (``"TSTS"``) form one ``custom`` order, evaluated as given, in the place
    of the first of them.

    Raises:
        ConfigError: no orders; MaskError: an entry is neither an order nor a mask of N.
    """
    entries = [value] if isinstance(value, (str, LoadingOrder)) else list(value)
    if not entries:
        raise ConfigError("orders is empty; give loading orders (prefix, suffix, window, all) "
                          "and/or masks such as TTSS")
    orders, loose, at = [], [], 0
    for entry in entries:
        if isinstance(entry, str) and entry not in ORDERS and is_mask(entry):
            at = at if loose else len(orders)
            loose.append(validate_mask(entry, num_blocks))
        elif isinstance(entry, str) and entry not in ORDERS:
            raise MaskError(f"orders entry {entry!r} is neither a loading order "
                            f"{list(NAMED_ORDERS)} nor a mask over {{S,T}} of length "
                            f"N={num_blocks}")
        else:
            orders.append(LoadingOrder.parse(entry, num_blocks))
    if loose:
        orders.insert(at, LoadingOrder(CUSTOM, tuple(dict.fromkeys(loose))))
    return orders


def bytes_loaded(mask: str, block_bytes: Sequence[int]) -> int:
    """The bytes ``mask`` loads beyond the student's files: its teacher blocks' bytes.

    Args:
        mask: the mask.
        block_bytes: bytes of each teacher block, block 0 first (from a model at a
            precision, ``pwl.stages.teacher_block_bytes``, or a bundle's files).
    """
    return sum(size for size, who in zip(block_bytes, mask, strict=True) if who == "T")


def parts_needed(masks: Sequence[str]) -> tuple[set[int], set[int], set[tuple[str, int]]]:
    """What running any of ``masks`` needs: teacher blocks, student blocks and adapters."""
    teacher, student, adapters = set(), set(), set()
    for mask in masks:
        for i, who in enumerate(mask):
            (teacher if who == "T" else student).add(i)
        adapters |= adapters_used(mask)
    return teacher, student, adapters

