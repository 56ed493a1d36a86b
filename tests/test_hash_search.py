"""The near-copy search: exactly the pairs (and groups) comparing all pairs finds, on hashes
spread evenly and on hashes that share most of their bits, as photos of one kind do."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.hash_search import near_pairs
from classifier.health import groups_of


def _all_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Every pair ``i < j`` within the distance, sorted (blocks of 500 rows)."""
    found = [np.empty((0, 2), np.int64)]
    for start in range(0, len(hashes), 500):
        distance = np.bitwise_count(hashes[start : start + 500, None] ^ hashes[None, :])
        first, second = np.nonzero(distance <= max_distance)
        first += start
        keep = first < second
        found.append(np.stack([first[keep], second[keep]], axis=1))
    return np.concatenate(found)


def _assert_exact(hashes: np.ndarray, max_distance: int) -> None:
    """The groups of all pairs, and among distinct hashes every pair itself."""
    found = near_pairs(hashes, max_distance)
    assert groups_of(len(hashes), found) == groups_of(len(hashes), _all_pairs(hashes, max_distance))
    distinct = np.unique(hashes)
    assert np.array_equal(near_pairs(distinct, max_distance), _all_pairs(distinct, max_distance))


@pytest.mark.parametrize("max_distance", [0, 1, 4, 7])
def test_banded_search_finds_the_same_groups_as_all_pairs(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    hashes = rng.integers(0, 2**63, 2000, dtype=np.uint64) * 2 + 1
    for i in range(0, 400, 4):  # near copies 0-8 bits away, chains, and exact repeats
        flipped = int(hashes[i])
        for bit in rng.choice(64, size=int(rng.integers(0, 9)), replace=False):
            flipped ^= 1 << int(bit)
        hashes[i + 1] = np.uint64(flipped)
        hashes[i + 2] = hashes[i + 1] ^ np.uint64(1 << int(rng.integers(64)))
    hashes[900:905] = hashes[899]
    _assert_exact(hashes, max_distance)
    assert groups_of(len(hashes), near_pairs(hashes, max_distance))  # copies to be found


def _shared_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random hashes, a third of them with 26 bits at zero (flat top and bottom rows: a white
    background), and a near copy (2 bits) of every 1000th."""
    hashes = rng.integers(0, 2**63, count, dtype=np.uint64)
    flat = rng.random(count) < 0.35
    hashes[flat] &= np.uint64(((1 << 51) - 1) & ~((1 << 13) - 1))
    hashes[1::1000] = hashes[::1000] ^ np.uint64(0b101)
    return hashes


def _clusters(rng: np.random.Generator, count: int, spread: int) -> np.ndarray:
    """Hashes around five centres, each up to ``spread`` bits off its centre (many are near
    one another: cells that splitting cannot shrink)."""
    centres = rng.integers(0, 2**63, 5, dtype=np.uint64)
    hashes = centres[rng.integers(0, 5, count)]
    for i in range(count):
        for bit in rng.choice(64, size=int(rng.integers(0, spread + 1)), replace=False):
            hashes[i] ^= np.uint64(1 << int(bit))
    return hashes


def _blank_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    """Hashes of 8 rows of 8 bits, each row blank (zero) in half of them: many cells split
    again and again, on different rows."""
    rows = rng.integers(0, 256, (count, 8), dtype=np.uint64)
    rows[rng.random((count, 8)) < 0.5] = 0
    return np.bitwise_or.reduce(rows << (np.arange(8, dtype=np.uint64) * np.uint64(8)), axis=1)


@pytest.mark.parametrize("max_distance", [1, 4, 9])
def test_hashes_that_share_most_bits_give_every_pair(max_distance: int) -> None:
    rng = np.random.default_rng(10 + max_distance)
    _assert_exact(_shared_rows(rng, 3000), max_distance)
    _assert_exact(_clusters(rng, 1500, 7), max_distance)
    _assert_exact(_blank_rows(rng, 3000), max_distance)
    few_bits = rng.integers(0, 2**14, 600, dtype=np.int64).astype(np.uint64) << np.uint64(20)
    _assert_exact(few_bits, max_distance)  # only 14 bits vary


def test_a_hundred_thousand_hashes_are_compared_without_all_pairs() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 100_000, dtype=np.uint64) * 2
    hashes[1::1000] = hashes[::1000] ^ np.uint64(0b101)
    pairs = near_pairs(hashes, 4)  # make bench times this (well under 10 s on one core)
    assert {tuple(p) for p in pairs.tolist()} >= {(i, i + 1) for i in range(0, 100_000, 1000)}


def test_blank_rows_searched_split_after_split_give_every_pair() -> None:
    hashes = np.unique(_blank_rows(np.random.default_rng(0), 8000))
    assert np.array_equal(near_pairs(hashes, 4), _all_pairs(hashes, 4))


def test_two_hundred_thousand_hashes_sharing_rows_are_searched() -> None:
    """A third of them in one cell of every band's first split: compared whole, 70,000 hashes
    would be 2.4 x 10^9 pairs (make bench times it)."""
    hashes = _shared_rows(np.random.default_rng(1), 200_000)
    pairs = {tuple(p) for p in near_pairs(hashes, 4).tolist()}
    assert pairs >= {(i, i + 1) for i in range(0, 200_000, 1000)}
