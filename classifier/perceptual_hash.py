"""The perceptual hash of the near-copy check (a 64-bit difference hash), and which hashes can
tell a near copy from a look-alike. The search for hashes a few bits apart is
:func:`classifier.hash_search.near_pairs`.
"""

from __future__ import annotations

import numpy as np
import torch

from classifier.hash_search import HASH_BITS
from classifier.scan_cache import NO_HASH, UNHASHED, to_signed

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


def informative(value: int | None) -> bool:
    """Whether an unsigned perceptual hash can tell a near copy from a look-alike (see
    :data:`MIN_EDGE_BITS`)."""
    if value is None:
        return False
    return MIN_EDGE_BITS <= value.bit_count() <= HASH_BITS - MIN_EDGE_BITS
