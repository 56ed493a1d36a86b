"""A JPEG ImageFolder for benchmarks: ``python -m benchmarks.make_data DIR N SIZE|photo``."""

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


def photo(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    """A photo-like picture (ImageNet's average size): smooth structure at three scales and
    sensor-like noise; about 100 KB as a quality-90 JPEG, as ImageNet's average file."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 128.0)
    for scale, amplitude in ((48, 90), (12, 45), (3, 25)):
        small = rng.normal(0, 1, (height // scale + 2, width // scale + 2, 3))
        grid = Image.fromarray((small * 40 + 128).clip(0, 255).astype(np.uint8))
        up = grid.resize((width + 2 * scale, height + 2 * scale), Image.Resampling.BICUBIC)
        pixels += (np.asarray(up, np.float64)[:height, :width] - 128) / 40 * amplitude
    pixels += rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _write_photo(args: tuple[Path, int]) -> None:
    path, seed = args
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed).save(path, quality=90)


def make_photos(root: Path, count: int, splits: tuple[str, ...] = ("train",)) -> Path:
    """``count`` photo-sized JPEGs per split (:func:`photo`) over 10 classes under ``root``."""
    jobs = []
    for offset, split in enumerate(splits):
        for i in range(count):
            path = root / split / f"class{i % CLASSES}" / f"{i:07d}.jpg"
            jobs.append((path, offset * 10**7 + i))
    todo = [j for j in jobs if not j[0].exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_photo, todo, chunksize=64))
    return root


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
    # DIR N SIZE: N square SIZE px JPEGs for training and N/8 for validation; SIZE "photo":
    # 500x375 photo-sized ones (N in train, N/8 in val, distinct seeds).
    folder, count = Path(sys.argv[1]), int(sys.argv[2])
    if sys.argv[3] == "photo":
        make_photos(folder, count, ("train",))
        make_photos(folder, max(CLASSES, count // 8), ("train", "val"))  # val seeds from 10**7
    else:
        make(folder, count, int(sys.argv[3]))
