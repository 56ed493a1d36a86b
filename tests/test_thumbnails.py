"""Near copies of small images: found by their thumbnails at 8 to 63 px, never invented among
the distinct demo digits, and reported before training starts."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import thumbnails
from classifier.splits import DataError
from classifier.thumbnails import similar_pairs, thumbnail
from tests.conftest import demo_digits, run_cli, tiny

Resize = Callable[[Image.Image], Image.Image]


def _digits(count: int | None = None) -> list[Image.Image]:
    files = sorted(demo_digits().glob("*/*/*.png"))
    assert len(files) == 5000, f"the demo digits are incomplete under {demo_digits()}"
    step = 1 if count is None else max(1, len(files) // count)
    return [Image.open(f).convert("RGB") for f in files[::step][:count]]


def _jpeg(image: Image.Image, quality: int = 75) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _photo(seed: int, size: int) -> Image.Image:
    """A smooth picture, like a small photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    return coarse.resize((size, size), Image.Resampling.BICUBIC)


def test_no_two_demo_digits_are_called_copies() -> None:
    blobs = [thumbnail(np.asarray(d)) for d in _digits()]
    assert all(b is not None for b in blobs)
    assert len(similar_pairs([b or b"" for b in blobs])) == 0
    # The margin the module's docstring states: distinct digits stay below 0.994.
    index, unit, _ = thumbnails._vectors([b or b"" for b in blobs])
    products = unit @ unit.T
    products.fill_diagonal_(-1)
    assert len(index) == len(blobs) and float(products.max()) < 0.994


def _by_side(side: int) -> Resize:
    return lambda d: d.resize((side, side), Image.Resampling.LANCZOS)


def _scaled(factor: float, how: Image.Resampling) -> Resize:
    return lambda d: d.resize((round(d.width * factor), round(d.height * factor)), how)


@pytest.mark.parametrize(
    ("side", "copy", "quality"),
    [
        (8, _scaled(2, Image.Resampling.BICUBIC), 75),
        (12, _scaled(3, Image.Resampling.BILINEAR), 90),
        (28, _scaled(2, Image.Resampling.BICUBIC), 75),
        (28, _scaled(1.5, Image.Resampling.BILINEAR), 75),
        (28, _scaled(1, Image.Resampling.NEAREST), 60),
        (40, _scaled(0.8, Image.Resampling.LANCZOS), 90),
    ],
)
def test_resized_and_reencoded_copies_of_small_digits_are_found(
    side: int, copy: Resize, quality: int
) -> None:
    originals = [_by_side(side)(d) for d in _digits(400)]
    copies = [_jpeg(copy(originals[i]), quality) for i in range(0, 400, 20)]
    blobs = [thumbnail(np.asarray(o)) or b"" for o in originals]
    blobs += [thumbnail(c) or b"" for c in copies]
    found = {tuple(p) for p in similar_pairs(blobs).tolist()}
    planted = {(i, 400 + k) for k, i in enumerate(range(0, 400, 20))}
    assert planted <= found
    if side >= thumbnails.SIZE:  # look-alikes only below 16 px (see the module)
        assert found == planted


@pytest.mark.parametrize("side", [32, 63])
def test_copies_of_small_photos_are_found(side: int) -> None:
    originals = [_photo(seed, side) for seed in range(300)]
    copies = [_jpeg(o.resize((side * 2, side * 2), Image.Resampling.BICUBIC)) for o in originals]
    blobs = [thumbnail(np.asarray(o)) or b"" for o in originals[:300]]
    blobs += [thumbnail(c) or b"" for c in copies[:30]]
    assert {tuple(p) for p in similar_pairs(blobs).tolist()} == {(i, 300 + i) for i in range(30)}


def test_the_blockwise_search_matches_all_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thumbnails, "BLOCK", 64)  # many blocks, bands across them
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (700, 1 + 256), dtype=np.uint8)
    pixels[:, 0] = 28
    pixels[350:] = pixels[:350]  # exact pixel copies...
    pixels[350:, 1:] = np.clip(
        pixels[350:, 1:].astype(int) + rng.integers(-3, 4, (350, 256)), 0, 255
    )
    blobs = [row.tobytes() for row in pixels]
    _, unit, _ = thumbnails._vectors(blobs)
    products = unit @ unit.T
    expected = {
        (i, j) for i, j in torch.nonzero(products >= thumbnails.THRESHOLD).tolist() if i < j
    }
    assert {tuple(p) for p in similar_pairs(blobs).tolist()} == expected
    assert len(expected) >= 350


def test_tiny_and_flat_images_have_no_usable_thumbnail() -> None:
    assert thumbnail(np.zeros((7, 100, 3), np.uint8)) is None
    flat = thumbnail(np.full((20, 20, 3), 128, np.uint8))
    assert flat is not None and thumbnails.compared([flat]) == 0


def _digit_folder(root: Path) -> Path:
    for split, first, last in (("train", 0, 12), ("val", 12, 16), ("test", 16, 20)):
        for label in ("0", "1", "2"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for path in sorted((demo_digits() / "train" / label).glob("*.png"))[first:last]:
                shutil.copy(path, folder / path.name)
    return root


def test_a_resized_copy_of_a_small_training_image_stops_the_run_before_training(
    tmp_path: Path,
) -> None:
    data = _digit_folder(tmp_path / "data")
    original = Image.open(next((data / "train" / "1").glob("*.png"))).convert("RGB")
    copy = _jpeg(original.resize((56, 56), Image.Resampling.BICUBIC))
    Image.fromarray(copy).save(data / "test" / "2" / "copy.jpg", quality=95)
    with pytest.raises(DataError, match=r"copy\.jpg"):
        run_cli(*tiny("fit", data, "--data.on_leakage", "error"))


def test_thumbnails_come_from_the_scan_cache_the_second_time(tmp_path: Path) -> None:
    from classifier.prescan import scan_split
    from classifier.scan_cache import NO_HASH, ScanCache
    from classifier.splits import read_split

    data = _digit_folder(tmp_path / "data")
    results = []
    for _ in range(2):
        cache = ScanCache.open()
        try:
            results.append(scan_split(read_split("train", data / "train", ["0", "1", "2"]), cache))
        finally:
            cache.close()
    first, second = results
    assert first.cached == 0 and second.cached == len(first.thumbs) == 36
    assert list(first.thumbs) == list(second.thumbs) and all(len(t) == 257 for t in first.thumbs)
    assert (second.phash == NO_HASH).all()  # no perceptual hash to take in the first epoch
