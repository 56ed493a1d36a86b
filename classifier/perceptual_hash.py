"""The perceptual hash of the near-copy check (a 64-bit difference hash), and which hashes can
tell a near copy from a look-alike. The search for hashes a few bits apart is
:func:`classifier.hash_search.near_pairs`.
"""

from __future__ import annotations

import functools

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


#: Rows of the image the thumbnail averages: 8 evenly spaced rows in each of its 8 bands, with
#: every column. Whole rows are read in one stride, so a 500x375 photo hashes in 0.05 ms, against
#: 0.14-0.2 ms for the grid of 128x128 samples this replaced and 0.9 ms for its decode. On 400 of
#: ``make bench``'s photos, 99 % of copies resized (0.5x-1.5x), re-encoded, brightened or blurred
#: hash within 3 bits of their original (the grid: 4), and distinct photos at least 13 apart.
ROWS = 64
#: ITU-R 601 luma weights, in thousandths (integers: see :func:`dhash`).
_GREY = np.array([299, 587, 114], dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _layout(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an image of ``height`` x ``width``: the rows read (each strip's middle), where each
    band of columns starts, and each band's width."""
    rows = ((np.arange(ROWS) * 2 + 1) * height) // (2 * ROWS)
    starts = (np.arange(9) * width) // 9
    return rows, starts, np.diff(starts, append=width).astype(np.int64)


def dhash(image: np.ndarray) -> int | None:
    """64-bit difference hash of an RGB ``uint8`` ``3xHxW`` image: a 9x8 grey thumbnail (the
    mean over each cell of :data:`ROWS` evenly spaced rows, 8 per band of rows, and all
    columns), one bit per pair of horizontal neighbours (1 where the right one is brighter).
    Resizing, re-encoding and small colour changes move few bits. All in integers (the means
    compared as cross-multiplied sums), so two cells of one flat colour are equal whatever
    their widths, and a hash does not depend on the machine. ``None`` below :data:`MIN_SIDE`
    and for nearly flat pictures (:data:`MIN_EDGE_BITS`).

    Raises:
        ValueError: not an RGB ``uint8`` ``3xHxW`` image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"an RGB uint8 3xHxW image is hashed, not {image.dtype} {image.shape}")
    height, width = image.shape[1:]
    if min(height, width) < MIN_SIDE:
        return None
    rows, starts, widths = _layout(height, width)
    bands = image[:, rows].reshape(3, 8, ROWS // 8, width).sum(axis=2, dtype=np.uint16)
    cells = np.add.reduceat(bands, starts, axis=2, dtype=np.uint32).astype(np.int64)
    grey = (cells * _GREY[:, None, None]).sum(axis=0)
    # The products stay under 5e16 at the pixel limit (an int64 holds 9.2e18).
    brighter = grey[:, 1:] * widths[:-1] > grey[:, :-1] * widths[1:]
    value = int.from_bytes(np.packbits(brighter).tobytes(), "big")
    return value if informative(value) else None


def phash_of(image: torch.Tensor | np.ndarray) -> int:
    """:func:`dhash` as the pre-scan stores it: a signed 64-bit integer, or
    :data:`~classifier.scan_cache.NO_HASH` for an image too small or flat to have one."""
    pixels = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    value = dhash(pixels)
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
