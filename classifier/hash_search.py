"""The search for 64-bit hashes a few bits apart (near copies), without comparing all pairs.

Two hashes that differ in at most ``d`` bits agree on at least one of any ``d + 1`` disjoint
groups of their bits (pigeonhole). So the hashes are sorted into *cells* by the value of one
group, for each group in turn, and only hashes sharing a cell are compared. A cell stays large
when many hashes agree on those bits: photos of products on a white background, or scans,
share whole rows of bits, and comparing such a cell pair by pair grows with its square (a third
of a folder in one cell: 5.9 s for 10^5 hashes, so about ten minutes for 10^6). A cell larger
than :data:`CELL` is therefore split again the same way, on ``d + 1`` groups of the bits its
hashes leave free (two of them within ``d`` bits differ only in those, so they still agree on
one group), when that at least halves the pairs to compare; otherwise (hashes all near one
another, which no split separates) it is compared whole. The first split, of all the hashes,
is always made, so no input costs more than comparing each of its parts whole.

Nothing is missed: by the pigeonhole, every near pair shares a part in some group of every
split that reaches it, and each part is either compared or split again. Each pair is reported
once: in the first group, of each split, on which its two hashes agree (later groups and their
further splits pass over pairs that agree on an earlier one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bits of a hash.
HASH_BITS = 64
#: Cells of at most this many hashes are compared pair by pair; larger ones are split again.
#: Comparing a cell of L hashes costs L^2/2 XORs, splitting it d + 1 sorts of L; 64 is an
#: estimate of where the two cost the same in NumPy (not tuned by measurement).
CELL = 64


def near_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, sorted and each once, linking hashes at most
    ``max_distance`` bits apart: every pair of distinct values that close (each value by its
    first occurrence), and each repeat of a value with its first occurrence. They make the
    same groups as all pairs (see :func:`~classifier.health.groups_of`).

    Raises:
        ValueError: ``max_distance`` is not in ``[0, 63]``.
    """
    values = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS - 1}], got {max_distance}")
    if len(values) < 2:
        return np.empty((0, 2), dtype=np.int64)
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    pairs = [np.stack([first[inverse.ravel()], np.arange(len(values))], axis=1)]  # repeats
    if max_distance > 0:
        pairs += [first[found] for found in _distinct_pairs(unique, max_distance)]
    joined = np.concatenate(pairs)
    joined = joined[joined[:, 0] != joined[:, 1]]
    joined.sort(axis=1)
    # Each pair comes once; sorted as one number per pair (np.unique of the rows took 1.3 s
    # for the 1.6 million pairs of 2,000 look-alike hashes, this 0.1 s).
    codes = np.sort(joined[:, 0] * len(values) + joined[:, 1])
    return np.stack([codes // len(values), codes % len(values)], axis=1)


def _distinct_pairs(values: np.ndarray, max_distance: int) -> list[np.ndarray]:
    """Index pairs of the (distinct) ``values`` within ``max_distance`` bits, each once. A
    task holds hashes sorted by cell, their cell numbers (from 0), the bit positions their
    cells leave free, and the masks of earlier groups whose pairs it passes over."""
    found: list[np.ndarray] = []
    everything = np.arange(len(values))
    tasks = [(everything, np.zeros(len(values), np.int64), np.arange(HASH_BITS), _NO_MASKS)]
    first = True
    while tasks:
        members, cells, free, skip = tasks.pop()
        free = _useful(values[members], free)
        bit_groups = _groups(free, max_distance)
        parts = [_Parts.of(values, members, cells, bits) for bits in bit_groups]
        size = np.bincount(cells).astype(np.float64)
        split_cost = sum(np.bincount(g.parent, g.size, len(size)) for g in parts)
        split = (split_cost < size**2 / 2) | first
        first = False
        whole = ~split[cells]
        found += _cell_pairs(values, members[whole], cells[whole], max_distance, skip)
        masks = np.array([_mask(bits) for bits in bit_groups], dtype=np.uint64)
        for i, (g, bits) in enumerate(zip(parts, bit_groups, strict=True)):
            rest = np.setdiff1d(free, bits)
            taken = split[g.parent] & (g.size > 1)
            further = taken & (g.size > CELL) & (len(rest) > max_distance)
            now = taken & ~further
            passed = np.concatenate([skip, masks[:i]])
            found += _cell_pairs(values, g.members[now], g.number[now], max_distance, passed)
            if further.any():
                tasks.append((g.members[further], _renumbered(g.number[further]), rest, passed))
    return found


_NO_MASKS = np.zeros(0, np.uint64)


def _mask(bits: np.ndarray) -> np.uint64:
    """The 64-bit mask of the bit positions ``bits``."""
    mask: np.uint64 = np.bitwise_or.reduce(np.left_shift(np.uint64(1), bits.astype(np.uint64)))
    return mask


def _renumbered(cells: np.ndarray) -> np.ndarray:
    """Sorted cell numbers renumbered from 0 (so a task's counts are sized to the task)."""
    return _numbered(cells[1:] != cells[:-1])


def _numbered(changes: np.ndarray) -> np.ndarray:
    """Run numbers from 0 of sorted entries, given where each entry differs from the one
    before (``changes``, one shorter than the entries)."""
    starts = np.ones(len(changes) + 1, bool)
    starts[1:] = changes
    return np.cumsum(starts) - 1


def _useful(hashes: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The ``free`` bit positions that vary among ``hashes``, the most even first (half ones,
    half zeros: they split cells best). A bit the same in all of them separates none, and
    two of them differ only in the other bits, so it is dropped."""
    varying = np.bitwise_or.reduce(hashes) ^ np.bitwise_and.reduce(hashes)
    free = free[((varying >> free.astype(np.uint64)) & np.uint64(1)).astype(bool)]
    sample = hashes[:: max(1, len(hashes) // 4096)]  # the order only needs an estimate
    ones = np.array([((sample >> np.uint64(b)) & np.uint64(1)).mean() for b in free.tolist()])
    return free[np.argsort(np.abs(ones - 0.5), kind="stable")] if len(free) else free


def _groups(free: np.ndarray, max_distance: int) -> list[np.ndarray]:
    """``max_distance + 1`` groups of the ``free`` bit positions, dealt round (each gets as
    many of the even bits as the others)."""
    return [free[i :: max_distance + 1] for i in range(max_distance + 1)]


class _Parts:
    """The parts of cells after splitting them on some bits: members sorted by part.

    Attributes:
        members: indices into the hashes, sorted by part.
        parent: the cell each came from.
        number: its part (numbered from 0 over all cells).
        size: the size of its part.
    """

    def __init__(self, members: np.ndarray, parent: np.ndarray, number: np.ndarray) -> None:
        self.members, self.parent, self.number = members, parent, number
        self.size = np.bincount(number)[number].astype(np.float64)

    @classmethod
    def of(
        cls, values: np.ndarray, members: np.ndarray, cells: np.ndarray, bits: np.ndarray
    ) -> _Parts:
        """Split the ``cells`` of ``members`` on the bit positions ``bits``."""
        key = values[members] & _mask(bits)
        order = np.lexsort((key, cells))
        parent, key = cells[order], key[order]
        changes = (parent[1:] != parent[:-1]) | (key[1:] != key[:-1])
        return cls(members[order], parent, _numbered(changes))


def _cell_pairs(
    values: np.ndarray,
    members: np.ndarray,
    cells: np.ndarray,
    max_distance: int,
    skip: np.ndarray,
) -> list[np.ndarray]:
    """Pairs of ``members`` (sorted by ``cells``) in one cell, within ``max_distance`` bits and
    differing somewhere under each mask of ``skip`` (a pair agreeing under one is reported by
    that earlier group). Each pass compares every member with the one ``offset`` places on,
    in its cell."""
    found = []
    live = np.flatnonzero(cells[1:] == cells[:-1])  # members with another one place on
    offset = 1
    while live.size:
        a, b = members[live], members[live + offset]
        differ = values[a] ^ values[b]
        close = np.bitwise_count(differ) <= max_distance
        for mask in skip:
            close[close] &= (differ[close] & mask) != 0
        if close.any():
            found.append(np.stack([a[close], b[close]], axis=1))
        offset += 1
        live = live[live + offset < len(cells)]
        live = live[cells[live + offset] == cells[live]]
    return found
