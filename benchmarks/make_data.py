"""Generate a JPEG ImageFolder for benchmarks: ``python -m benchmarks.make_data DIR N SIZE``."""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def _write(args: tuple[Path, int, int]) -> None:
    path, seed, size = args
    rng = np.random.default_rng(seed)
    # Smooth noise compresses like a photo (a few tens of KB), unlike white noise.
    small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def make(root: Path, train: int, size: int, val: int | None = None) -> Path:
    """``train`` training and ``val`` validation JPEGs of ``size`` px over 10 classes."""
    val = val if val is not None else max(CLASSES, train // 8)
    jobs = []
    for offset, (split, count) in enumerate((("train", train), ("val", val))):
        for i in range(count):  # distinct seeds: val must not repeat training images
            path = root / split / f"class{i % CLASSES}" / f"{i:06d}.jpg"
            jobs.append((path, offset * 10**6 + i, size))
    todo = [j for j in jobs if not j[0].exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, todo, chunksize=64))
    return root


if __name__ == "__main__":
    make(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
