"""The perceptual hash of the near-copy check, and the banded search for hashes a few bits apart.

Two hashes that differ in at most ``max_distance`` of their 64 bits agree on at least one of
``max_distance + 1`` bands of bits (pigeonhole), so only hashes sharing a band's value are
compared (:func:`near_pairs`): the cost grows with the candidates, not with all pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from classifier.scan_cache import NO_HASH, UNHASHED, to_signed

#: Bits of the perceptual hash.
HASH_BITS = 64
#: Images whose shorter side is below this get no perceptual hash: at that size distinct
#: pictures (digits, icons) hash as closely as resized copies, so they are compared by their
#: thumbnails' pixels instead (:mod:`classifier.thumbnails`).
MIN_SIDE = 64
#: A hash with fewer than this many bits set (or unset) comes from a nearly flat picture
#: (blank frames, plain backgrounds): such pictures all hash alike, so they too are compared
#: byte for byte only.
MIN_EDGE_BITS = 8


#: Rows and columns of the image the thumbnail averages (every k-th of a larger image): a
#: 500x375 photo costs about 0.2 ms instead of the 1 ms of filtering every pixel, and resized or
#: re-encoded copies still hash within 3 bits of each other.
SAMPLES = 128
#: ITU-R 601 luma weights.
_GREY = torch.tensor([0.299, 0.587, 0.114])


def dhash(image: torch.Tensor) -> int | None:
    """64-bit difference hash of an RGB ``uint8`` ``3xHxW`` image: a 9x8 grey thumbnail (the
    mean of :data:`SAMPLES` rows and columns over each cell), one bit per pair of horizontal
    neighbours (1 where the right one is brighter). Resizing, re-encoding and small colour
    changes move few bits. ``None`` below :data:`MIN_SIDE` and for nearly flat pictures
    (:data:`MIN_EDGE_BITS`)."""
    import torch.nn.functional as F  # noqa: N812

    height, width = image.shape[1:]
    if min(height, width) < MIN_SIDE:
        return None
    sampled = image[:, :: max(1, height // SAMPLES), :: max(1, width // SAMPLES)].float()
    grey = torch.tensordot(_GREY, sampled, dims=1)
    thumbnail = F.adaptive_avg_pool2d(grey[None, None], (8, 9))[0, 0]
    edges = (thumbnail[:, 1:] > thumbnail[:, :-1]).flatten().numpy()
    if not MIN_EDGE_BITS <= int(edges.sum()) <= HASH_BITS - MIN_EDGE_BITS:
        return None
    return int.from_bytes(np.packbits(edges).tobytes(), "big")


def phash_of(image: torch.Tensor | np.ndarray) -> int:
    """:func:`dhash` as the pre-scan stores it: a signed 64-bit integer, or
    :data:`~classifier.scan_cache.NO_HASH` for an image too small or flat to have one."""
    tensor = torch.as_tensor(image)
    value = dhash(tensor)
    return NO_HASH if value is None else to_signed(value)


def informative_mask(phash: np.ndarray) -> np.ndarray:
    """Which stored perceptual hashes can tell a near copy from a look-alike (computed, and
    with :data:`MIN_EDGE_BITS` to ``64 - MIN_EDGE_BITS`` bits set)."""
    values = np.asarray(phash, dtype=np.int64)
    bits = np.bitwise_count(values.view(np.uint64))
    computed = (values != UNHASHED) & (values != NO_HASH)
    mask: np.ndarray = computed & (bits >= MIN_EDGE_BITS) & (bits <= HASH_BITS - MIN_EDGE_BITS)
    return mask


def _band_pairs(values: np.ndarray, lo: int, hi: int, max_distance: int) -> list[np.ndarray]:
    """Pairs of distinct ``values`` that share bits ``lo:hi`` and are within the distance."""
    key = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    found = []
    for offset in range(1, len(order)):
        same = ordered[offset:] == ordered[:-offset]
        if not same.any():  # no run of equal keys is longer than offset
            break
        first, second = order[:-offset][same], order[offset:][same]
        close = np.bitwise_count(values[first] ^ values[second]) <= max_distance
        found.append(np.stack([first[close], second[close]], axis=1))
    return found


def near_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, linking hashes at most ``max_distance`` bits apart:
    every such pair of distinct hashes, and each repeat of a hash with its first occurrence
    (the same groups as all pairs give, see :func:`groups_of`). Distinct hashes are compared
    through the banded index, so the cost grows with the candidates, not with all pairs.
    """
    values = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS - 1}], got {max_distance}")
    if len(values) < 2:
        return np.empty((0, 2), dtype=np.int64)
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    pairs = [np.stack([first[inverse], np.arange(len(values))], axis=1)]  # equal hashes
    edges = np.linspace(0, HASH_BITS, min(max_distance, HASH_BITS - 1) + 2).astype(int)
    if max_distance > 0:
        for lo, hi in itertools.pairwise(edges):
            for found in _band_pairs(unique, int(lo), int(hi), max_distance):
                pairs.append(first[found])  # one representative per distinct hash
    joined = np.concatenate(pairs)
    joined = joined[joined[:, 0] != joined[:, 1]]
    joined.sort(axis=1)
    return np.unique(joined, axis=0)


def informative(value: int | None) -> bool:
    """Whether an unsigned perceptual hash can tell a near copy from a look-alike (see
    :data:`MIN_EDGE_BITS`)."""
    if value is None:
        return False
    return MIN_EDGE_BITS <= value.bit_count() <= HASH_BITS - MIN_EDGE_BITS
