"""Near copies of small images (:mod:`classifier.thumbnails`): found on the demo digits, none
invented among them, and the cost of the search at 10^5 images.

``python -m benchmarks.small_copies`` prints the result; ``make bench`` runs it too.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _jpeg_copy(image: Image.Image) -> np.ndarray:
    """A 2x-resized (bicubic), JPEG-encoded (quality 75) copy of ``image``."""
    buffer = io.BytesIO()
    image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC).save(
        buffer, "JPEG", quality=75
    )
    return np.asarray(Image.open(buffer).convert("RGB"))


def _variants(digits: list[Image.Image], count: int) -> list[bytes]:
    """``count`` distinct small pictures: the digits rotated and shifted at random."""
    from classifier.thumbnails import thumbnail

    rng = np.random.default_rng(0)
    blobs = []
    while len(blobs) < count:
        for digit in digits[: count - len(blobs)]:
            moved = digit.rotate(
                rng.uniform(-20, 20),
                translate=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))),
                resample=Image.Resampling.BILINEAR,
            )
            blobs.append(thumbnail(np.asarray(moved)) or b"")
    return blobs


def bench_small_copies() -> dict[str, Any]:
    """Pairs among the distinct demo digits (should be none), the share of 250 planted copies
    found, seconds for 10^5 thumbnails, and the speed-up over comparing all pairs (25k)."""
    from classifier import thumbnails
    from classifier.demo_data import write_mnist

    files = sorted(write_mnist(REPO / "data" / "mnist").glob("*/*/*.png"))
    digits = [Image.open(f).convert("RGB") for f in files]
    blobs = [thumbnails.thumbnail(np.asarray(d)) or b"" for d in digits]
    false_pairs = len(thumbnails.similar_pairs(blobs))
    planted = list(range(0, len(digits), len(digits) // 250))[:250]
    copies = [thumbnails.thumbnail(_jpeg_copy(digits[i])) or b"" for i in planted]
    found = {tuple(p) for p in thumbnails.similar_pairs(blobs + copies).tolist()}
    recall = np.mean([(i, len(blobs) + k) in found for k, i in enumerate(planted)])
    many = _variants(digits, 100_000)
    start = time.perf_counter()
    thumbnails.similar_pairs(many)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    thumbnails.similar_pairs(many[:25_000])
    banded_s = time.perf_counter() - start
    _, unit, _ = thumbnails._vectors(many[:25_000])
    start = time.perf_counter()
    for first in range(0, len(unit), thumbnails.BLOCK):  # every pair, block by block
        products = unit[first : first + thumbnails.BLOCK] @ unit[first:].T
        (products >= thumbnails.THRESHOLD).nonzero()
    all_pairs_s = time.perf_counter() - start
    return {
        "demo_false_pairs": false_pairs,
        "demo_planted_recall": float(recall),
        "thumbnails_100k_s": seconds,
        "speedup_vs_all_pairs_25k": all_pairs_s / banded_s,
    }


if __name__ == "__main__":
    print(json.dumps(bench_small_copies(), indent=2))
