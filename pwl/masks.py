"""The mask vocabulary: which network runs each block, and how masks follow each other.

A mask is a string over {S,T} of length N, block 0 first: ``"TTSS"`` runs the
teacher's first two blocks and the student's last two. Everything that reasons
about masks lives here: validation, the loading orders (prefix, suffix, window,
all), the masks the cross-path loss trains on, random mixed masks, loading
sequences (one teacher block added per step) and which adapters a mask runs
through. The rule "an adapter converts the feature where the network switches"
is ``adapter_between``; ``HybridNet.step`` applies it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from pwl.errors import ConfigError, MaskError

ORDERS = ("prefix", "suffix", "window", "all")
TO = {"T": "to_teacher", "S": "to_student"}

# A loading order as configs and manifests give it: a name, block indices, or masks.
LoadingOrder = str | Sequence[int] | Sequence[str]


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
    raise MaskError(f"loading order {order!r} is unknown; use one of {list(ORDERS)} "
                    "or an explicit list of masks")


def resolve_masks(orders: str | Sequence[str], num_blocks: int) -> list[tuple[str, str]]:
    """(order, mask) pairs for loading-order names and explicit masks.

    Args:
        orders: names among prefix|suffix|window|all and/or masks such as ``"TSTS"``.
        num_blocks: N.

    Returns:
        Distinct pairs in the given order. Explicit masks and the masks of ``all``
        (which is no loading order) get the order ``"custom"``.
    """
    if isinstance(orders, str):
        orders = [orders]
    if not orders:
        raise ConfigError("orders is empty; give loading orders (prefix, suffix, window, all) "
                          "and/or masks such as TTSS")
    pairs: list[tuple[str, str]] = []
    for entry in orders:
        if entry in ORDERS:
            label = "custom" if entry == "all" else entry
            pairs += [(label, mask) for mask in masks_for_order(entry, num_blocks)]
        elif is_mask(entry):
            pairs.append(("custom", validate_mask(entry, num_blocks)))
        else:
            raise MaskError(f"orders entry {entry!r} is neither a loading order {list(ORDERS)} "
                            f"nor a mask over {{S,T}} of length N={num_blocks}")
    return list(dict.fromkeys(pairs))


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


def blocks_of_masks(masks: Sequence[str], num_blocks: int) -> list[int]:
    """The teacher blocks a sequence of masks adds, one per step (all-student first if left out)."""
    n = num_blocks
    masks = [validate_mask(m, n) for m in masks]
    if not masks or masks[0] != "S" * n:
        masks = ["S" * n, *masks]
    blocks = []
    for prev, mask in itertools.pairwise(masks):
        changed = [i for i in range(n) if prev[i] != mask[i]]
        if len(changed) != 1 or mask[changed[0]] != "T":
            raise MaskError(f"loading order goes from {prev!r} to {mask!r}; each step must add "
                            "exactly one teacher block")
        blocks.append(changed[0])
    return blocks


def loading_masks(order: LoadingOrder, num_blocks: int) -> list[str]:
    """The masks a loading order passes through: all-student, then one teacher block more each.

    Args:
        order: ``"prefix"`` (from the input side), ``"suffix"``, a list of block
            indices in loading order, or a list of masks each adding one ``T``
            (all-student first, added if left out).
        num_blocks: N.

    Returns:
        masks, ``"S" * N`` first; a partial order ends before all-teacher.
    """
    n = num_blocks
    if isinstance(order, str):
        if order not in ("prefix", "suffix"):
            raise MaskError(f"loading order {order!r} cannot be loaded block by block; use "
                            "prefix, suffix, a list of block indices or a list of masks")
        return masks_for_order(order, n)
    items = list(order)
    if items and all(isinstance(m, str) for m in items):
        blocks = blocks_of_masks(items, n)
    elif all(isinstance(b, int) and not isinstance(b, bool) for b in items):
        blocks = items
    else:
        raise MaskError(f"loading order {items!r} mixes types; give block indices "
                        "[0, 1, ...] or masks ['TSSS', 'TTSS', ...]")
    bad = [b for b in blocks if not 0 <= b < n]
    if bad or len(set(blocks)) != len(blocks):
        raise MaskError(f"loading order {blocks} must name distinct blocks in [0, {n - 1}]")
    masks, current = ["S" * n], ["S"] * n
    for b in blocks:
        current[b] = "T"
        masks.append("".join(current))
    return masks


def parts_needed(masks: Sequence[str]) -> tuple[set[int], set[int], set[tuple[str, int]]]:
    """What running any of ``masks`` needs: teacher blocks, student blocks and adapters."""
    teacher, student, adapters = set(), set(), set()
    for mask in masks:
        for i, who in enumerate(mask):
            (teacher if who == "T" else student).add(i)
        adapters |= adapters_used(mask)
    return teacher, student, adapters
