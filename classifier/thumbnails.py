"""Near copies of small images, found by their pixels.

Below :data:`~classifier.perceptual_hash.MIN_SIDE` a 64-bit perceptual hash cannot tell a
resized copy from a look-alike (distinct 28 px digits hash as closely as copies), so small
images are compared by a 16x16 grey thumbnail instead: two images are near copies when their
thumbnails' pixels correlate at least :data:`THRESHOLD`. On the 5,000 demo digits
(``tests/test_thumbnails.py`` holds these numbers) distinct digits correlate at most 0.993,
while 2x- and 1.5x-resized and same-size JPEG re-encodings of a digit keep 0.9966 or more.
Images under 16 px have so few pixels that a JPEG re-encoding moves them more than a different
picture would, so a pair with such an image is held to the looser :data:`SMALL_THRESHOLD` (a
2x-resized JPEG copy of an 8 px digit keeps 0.99); at that size look-alikes are grouped too.

Every pair is compared exactly by blocks of matrix products, but not every pair is computed:
rows are sorted by their leading principal coordinate, and two rows that close differ there by
at most their distance, so each block meets only the run of rows near its own coordinates.
10^5 thumbnails take about 11 s on two cores (``make bench``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

#: Images with a shorter side below this have no thumbnail (compared byte for byte only).
MIN_SIDE = 8
#: The thumbnail's side in pixels.
SIZE = 16
#: Correlation of two thumbnails from which their images are near copies.
THRESHOLD = 0.995
#: The same for a pair whose smaller image has a side under :data:`SIZE` pixels.
SMALL_THRESHOLD = 0.99
#: A thumbnail whose grey levels vary less than this (standard deviation) is nearly flat: such
#: pictures all look alike, so they are compared byte for byte only.
MIN_STD = 2.0
#: Thumbnails per block of the pairwise products (memory: ``BLOCK**2`` floats).
BLOCK = 4096


def thumbnail(pixels: np.ndarray) -> bytes | None:
    """The thumbnail of an RGB ``uint8`` ``HxWx3`` image: its shorter side (capped at 255) in one
    byte, then :data:`SIZE` x :data:`SIZE` grey levels (Lanczos-filtered); ``None`` for images
    with a side under :data:`MIN_SIDE`."""
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        return None
    grey = Image.fromarray(pixels).convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return bytes([min(height, width, 255)]) + grey.tobytes()


def _vectors(blobs: Sequence[bytes]) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """The usable thumbnails' indices, their pixels centred and scaled to unit length (so a dot
    product is a correlation), and their images' shorter sides."""
    usable = [i for i, b in enumerate(blobs) if len(b) == SIZE * SIZE + 1]
    if not usable:  # torch warns about the deviation of no rows
        return np.empty(0, np.int64), torch.empty(0, SIZE**2), np.empty(0, np.int64)
    raw = np.frombuffer(b"".join(blobs[i] for i in usable), np.uint8).reshape(-1, SIZE**2 + 1)
    sides, pixels = raw[:, 0].astype(np.int64), torch.from_numpy(raw[:, 1:].astype(np.float32))
    centred = pixels - pixels.mean(dim=1, keepdim=True)
    std = centred.std(dim=1, correction=0)
    varied = (std >= MIN_STD).numpy()
    unit = centred[varied] / centred[varied].norm(dim=1, keepdim=True)
    return np.asarray(usable, np.int64)[varied], unit, sides[varied]


def _leading(unit: torch.Tensor) -> torch.Tensor:
    """Each row's coordinate along the leading principal direction of ``unit``."""
    sample = unit[:: max(1, len(unit) // 20_000)]
    vectors: torch.Tensor = torch.linalg.eigh(sample.T @ sample).eigenvectors  # ascending
    return unit @ vectors[:, -1]


def _candidates(unit: torch.Tensor, threshold: float) -> torch.Tensor:
    """Index pairs ``(i, j)``, ``i < j``, of rows of ``unit`` whose dot product is at least
    ``threshold``. Rows are taken in the order of their leading principal coordinate, which
    two rows that close differ in by at most their distance, so each block of rows is compared
    only with the run of rows whose coordinate lies within that distance of the block's."""
    radius = float(np.sqrt(2 * (1 - threshold))) + 1e-4
    coordinate, order = torch.sort(_leading(unit))
    ordered = unit[order]
    found = [torch.empty((0, 2), dtype=torch.long)]
    for start in range(0, len(ordered), BLOCK):
        rows = ordered[start : start + BLOCK]
        stop = int(torch.searchsorted(coordinate, coordinate[start : start + BLOCK][-1] + radius))
        for other in range(start, stop, BLOCK):
            products = rows @ ordered[other : min(other + BLOCK, stop)].T
            i, j = torch.nonzero(products >= threshold - 1e-4, as_tuple=True)
            i, j = i + start, j + other
            found.append(torch.stack([order[i[i < j]], order[j[i < j]]], dim=1))
    return torch.cat(found).sort(dim=1).values


def compared(blobs: Sequence[bytes]) -> int:
    """How many of ``blobs`` are compared by :func:`similar_pairs` (thumbnails not flat)."""
    return len(_vectors(blobs)[0])


def similar_pairs(blobs: Sequence[bytes]) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of ``blobs`` (:func:`thumbnail`\\ s, ``b""`` for none)
    that are near copies: thumbnails correlated at least :data:`THRESHOLD`
    (:data:`SMALL_THRESHOLD` when the smaller image has a side under :data:`SIZE`)."""
    index, unit, sides = _vectors(blobs)
    if len(index) < 2:
        return np.empty((0, 2), dtype=np.int64)
    loosest = SMALL_THRESHOLD if (sides < SIZE).any() else THRESHOLD
    pairs = _candidates(unit, loosest)
    correlation = (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(dim=1).numpy()
    first, second = pairs[:, 0].numpy(), pairs[:, 1].numpy()
    smaller = np.minimum(sides[first], sides[second])
    close = correlation >= np.where(smaller < SIZE, SMALL_THRESHOLD, THRESHOLD)
    return np.stack([index[first[close]], index[second[close]]], axis=1)
