"""The perceptual hash: copies of a photo hash close, distinct photos far apart, and every route
to it (a loader worker's tensor, a decoded array, a strided view) gives the same value."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from benchmarks.make_data import photo
from classifier.perceptual_hash import MIN_SIDE, dhash, phash_of
from classifier.scan_cache import NO_HASH


def _chw(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _bits(first: int | None, second: int | None) -> int:
    assert first is not None and second is not None
    return (first ^ second).bit_count()


def test_copies_hash_within_the_default_distance_and_distinct_photos_far_beyond() -> None:
    copies = {
        "half size": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
        "0.8x": lambda im: im.resize((im.width * 4 // 5, im.height * 4 // 5)),
        "1.5x": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2)),
        "quality 60": lambda im: _jpeg(im, 60),
        "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
        "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
    }
    originals = [_jpeg(photo(seed), 90) for seed in range(12)]
    hashes = [dhash(_chw(im)) for im in originals]
    for name, change in copies.items():
        pairs = zip(hashes, originals, strict=True)
        distances = [_bits(h, dhash(_chw(change(im)))) for h, im in pairs]
        assert max(distances) <= 4, (name, distances)  # the default duplicate_bits
    apart = [_bits(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(apart) >= 10, sorted(apart)[:5]


def test_every_part_of_the_picture_counts() -> None:
    """A picture whose top, bottom, left or right half is another's is no near copy of it."""
    first, second = _chw(photo(5)), _chw(photo(6))
    height, width = first.shape[1:]
    halves = {
        "top": np.s_[:, : height // 2],
        "bottom": np.s_[:, height // 2 :],
        "left": np.s_[:, :, : width // 2],
        "right": np.s_[:, :, width // 2 :],
    }
    for name, half in halves.items():
        mixed = first.copy()
        mixed[half] = second[half]
        assert _bits(dhash(first), dhash(mixed)) > 8, name


def test_every_route_to_the_hash_gives_the_same_value() -> None:
    pixels = _chw(_jpeg(photo(3, 333, 217), 90))  # odd sizes: bands of unequal widths
    tensor = torch.from_numpy(pixels)
    strided = np.ascontiguousarray(pixels.transpose(1, 2, 0)).transpose(2, 0, 1)  # HWC memory
    assert not strided.flags.c_contiguous
    values = {phash_of(pixels), phash_of(tensor), phash_of(strided), phash_of(tensor.clone())}
    assert len(values) == 1 and NO_HASH not in values


def test_small_and_flat_pictures_have_no_hash() -> None:
    small = _chw(photo(4, MIN_SIDE - 1, 200))
    flat = np.full((3, 120, 160), 128, np.uint8)
    gradient = np.broadcast_to(np.linspace(0, 255, 160, dtype=np.uint8), (3, 120, 160))
    assert dhash(small) is None and dhash(flat) is None
    assert dhash(gradient) is None  # every bit the same: nothing tells two gradients apart
    assert phash_of(small) == NO_HASH
    assert dhash(_chw(photo(4, MIN_SIDE, MIN_SIDE))) is not None


def test_flat_areas_compare_equal_whatever_the_width() -> None:
    """Blank pages have no hash at any width, and a photo beside a white margin keeps its hash
    when resized (float means once made flat cells differ by rounding, at 702 widths of white)."""
    for width in (96, 160, 299, 320, 375, 480, 600, 768, 1000, 1200, 1600, 2048):
        for value in (250, 255):
            assert dhash(np.full((3, 360, width), value, np.uint8)) is None, (width, value)
    canvas = Image.new("RGB", (500, 375), (255, 255, 255))
    canvas.paste(photo(7, 275, 375), (225, 0))  # the left 45 % white
    original = dhash(_chw(canvas))
    for width in range(300, 701, 25):
        resized = canvas.resize((width, round(375 * width / 500)), Image.Resampling.BICUBIC)
        assert _bits(original, dhash(_chw(_jpeg(resized, 90)))) <= 4, width


def test_only_rgb_bytes_are_hashed() -> None:
    pixels = _chw(photo(8))
    for wrong in (pixels / 255.0, pixels.astype(np.uint16), pixels[:1], pixels.transpose(1, 2, 0)):
        with pytest.raises(ValueError, match="RGB uint8"):
            dhash(wrong)
