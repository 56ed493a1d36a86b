"""The search for 64-bit hashes a few bits apart (near copies), without comparing all pairs.

Two hashes that differ in at most ``d`` bits agree on at least one of any ``d + 1`` disjoint
groups of their bits (pigeonhole). So the hashes are sorted into *cells* by the value of one
group, for each group in turn, and only hashes sharing a cell are compared. A cell stays large
when many hashes agree on those bits: photos of products on a white background, or scans,
share whole rows of bits, and comparing such a cell pair by pair grows with its square (a third
of a folder in one cell: 5.9 s for 10^5 hashes, so about ten minutes for 10^6). A cell larger
than :data:`CELL` is therefore split again the same way, on ``d + 1`` groups of the bits its
hashes leave free: two of them within ``d`` bits still agree on one of those groups. It is
split when that leaves fewer pairs to compare, and compared whole otherwise (hashes that are
all near one another, which no split separates). Every pair found is checked bit by bit, so
the result is exact whatever the split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bits of a hash.
HASH_BITS = 64
#: Cells of at most this many hashes are compared pair by pair; larger ones are split again.
#: Comparing a cell of L hashes costs L^2/2 XORs, splitting it d + 1 sorts of L: in NumPy the
#: two cost about the same near 64 (measured on 10^6 random hashes, 4 bits: 64 took 2.3 s,
#: 16 took 3.3 s, 256 took 3.4 s).
CELL = 64


def near_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, sorted, linking hashes at most ``max_distance`` bits
    apart: every such pair of distinct hashes, and each repeat of a hash with its first
    occurrence (the same groups as all pairs give, see :func:`~classifier.health.groups_of`).

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
    # One number per pair, sorted, repeats dropped: np.unique (its rows, or its hash table in
    # NumPy 2.3) took 1.3 s for the 1.6 million pairs of 2,000 look-alike hashes, this 0.1 s.
    codes = np.sort(joined[:, 0] * len(values) + joined[:, 1])
    codes = codes[np.concatenate([codes[:1] == codes[:1], codes[1:] != codes[:-1]])]
    return np.stack([codes // len(values), codes % len(values)], axis=1)


def _distinct_pairs(values: np.ndarray, max_distance: int) -> list[np.ndarray]:
    """Index pairs of the (distinct) ``values`` within ``max_distance`` bits, possibly
    repeated. A task holds hashes sorted by cell, their cell numbers and the bit positions
    their cells leave free; each of its cells is split on ``d + 1`` groups of those bits when
    that leaves fewer pairs to compare (the sum of the squared sizes of its parts, over the
    groups, below half its own square), else compared whole. So no cell costs more than
    comparing it whole, and hashes that are all near one another are not split for nothing."""
    found: list[np.ndarray] = []
    tasks = [(np.arange(len(values)), np.zeros(len(values), np.int64), np.arange(HASH_BITS))]
    while tasks:
        members, cells, free = tasks.pop()
        free = _useful(values[members], free)
        groups = [_Parts.of(values, members, cells, bits) for bits in _groups(free, max_distance)]
        size = np.bincount(cells).astype(np.float64)
        split_cost = sum(np.bincount(g.parent, g.size, len(size)) for g in groups)
        split = split_cost < size**2 / 2
        whole = ~split[cells]
        found += _cell_pairs(values, members[whole], cells[whole], max_distance)
        for g, bits in zip(groups, _groups(free, max_distance), strict=True):
            rest = np.setdiff1d(free, bits)
            taken = split[g.parent] & (g.size > 1)
            further = taken & (g.size > CELL) & (len(rest) > max_distance)
            now = taken & ~further
            found += _cell_pairs(values, g.members[now], g.number[now], max_distance)
            if further.any():
                tasks.append((g.members[further], g.number[further], rest))
    return found


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
        mask = np.bitwise_or.reduce(np.left_shift(np.uint64(1), bits.astype(np.uint64)))
        key = values[members] & mask
        order = np.lexsort((key, cells))
        parent, key = cells[order], key[order]
        starts = np.ones(len(order), bool)
        starts[1:] = (parent[1:] != parent[:-1]) | (key[1:] != key[:-1])
        return cls(members[order], parent, np.cumsum(starts) - 1)


def _cell_pairs(
    values: np.ndarray, members: np.ndarray, cells: np.ndarray, max_distance: int
) -> list[np.ndarray]:
    """Pairs of ``members`` (sorted by ``cells``) in one cell and within ``max_distance``
    bits: each pass compares every member with the one ``offset`` places on, in its cell."""
    found = []
    live = np.flatnonzero(cells[1:] == cells[:-1])  # members with another one place on
    offset = 1
    while live.size:
        a, b = members[live], members[live + offset]
        close = np.bitwise_count(values[a] ^ values[b]) <= max_distance
        found.append(np.stack([a[close], b[close]], axis=1))
        offset += 1
        live = live[live + offset < len(cells)]
        live = live[cells[live + offset] == cells[live]]
    return found
