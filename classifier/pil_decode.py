"""Decoding an image file into RGB pixels with PIL, without torch.

The rules every reader shares (which files are images, which formats may be opened, how large
an image may be, how odd modes become RGB) live here, so that ``classifier-predict`` (which
must run where torch is not installed) reads images exactly as training does.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

#: Extensions read as images (compared case-insensitively). Anything else is ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
#: Transparent pixels are composited onto this colour (white, as image viewers show them).
BACKGROUND = (255, 255, 255)
#: Formats PIL may open. A file whose content is another format is excluded even if its
#: extension looks right (PIL can open formats such as EPS that run external programs).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM"})


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image extension and is not a hidden or resource-fork file."""
    return is_image_name(os.path.basename(path))


def is_image_name(name: str) -> bool:
    """:func:`is_image_file` of a bare file name (called once per file of a folder walk)."""
    dot = name.rfind(".")
    return dot > 0 and not name.startswith(".") and name[dot:].lower() in IMAGE_EXTENSIONS


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an ``HxWx3`` uint8 array."""
    mode = image.mode
    if mode in {"I;16", "I;16L", "I;16B", "I;16N", "I"}:
        # 16-bit (and 32-bit integer) grey: scale to 8 bits instead of clipping to white.
        array = np.asarray(image, dtype=np.int64)
        peak: float = 65535 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255
        grey = np.clip(array * 255 // peak, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        grey = np.clip(np.rint(array / peak * 255), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        canvas.alpha_composite(rgba)
        return np.asarray(canvas.convert("RGB"))
    return np.asarray(image.convert("RGB"))


#: The largest image file read (a larger one is no photo: a sparse file, or a hostile one).
MAX_FILE_BYTES = 1 << 30
#: The most times longer one side of an image may be than the other. Evaluation resizes the
#: shorter side to about the training size, so a 1 x 4,000,000 px PNG (7.8 KB) would become an
#: image of 12 GB; at this bound a 518 px model's resize stays under 60 MB. Panoramas are 2:1
#: to 10:1.
MAX_ASPECT_RATIO = 50


class ImageShapeError(ValueError):
    """An image too elongated to resize (see :data:`MAX_ASPECT_RATIO`)."""


def read_file(path: bytes | str | Path) -> bytes:
    """The bytes of a regular file, opened without blocking (a file swapped for a FIFO after
    the walk cannot hang a reader); every reader of image files reads through this.

    Raises:
        OSError: not a regular file, or larger than :data:`MAX_FILE_BYTES`.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        # Reads of the size fstat gives (and one more byte, to see the end): a read of the
        # largest size allowed would allocate that much each time (0.09 ms a file, not 0.015).
        chunks, total, want = [], 0, info.st_size + 1
        while total <= MAX_FILE_BYTES and (chunk := os.read(fd, want)):
            chunks.append(chunk)
            total += len(chunk)
            want = max(want - len(chunk), 1 << 16)  # the file grew: read on to its end
    finally:
        os.close(fd)
    if total > MAX_FILE_BYTES:  # it grew past the limit while read
        raise OSError(f"larger than {MAX_FILE_BYTES >> 20} MiB")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_pixels(width: int, height: int, path: str | Path) -> None:
    """Refuse an image larger than PIL's decompression-bomb limit, or too elongated to resize
    (:data:`MAX_ASPECT_RATIO`), from its header, before it is decoded: every decoding route
    (the scan, the loaders, ``predict``, ``classifier-predict``, verification) calls this.

    Raises:
        Image.DecompressionBombError: ``width * height`` exceeds ``Image.MAX_IMAGE_PIXELS``.
        ImageShapeError: one side is more than :data:`MAX_ASPECT_RATIO` times the other.
    """
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ImageShapeError(
            f"{width}x{height} pixels: one side is more than {MAX_ASPECT_RATIO} times the "
            "other (resizing it would need gigabytes)"
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(PIL.Image.MAX_IMAGE_PIXELS); a decompression bomb?"
        )


def decode_pil(source: str | Path | bytes | BinaryIO) -> np.ndarray:
    """Decode an image file (a path, read by :func:`read_file`, or its bytes) fully with PIL
    into an RGB ``uint8`` ``HxWx3`` array (strict: a truncated file raises): size and shape
    checks from the header (:func:`check_pixels`), allowed formats only, the first frame of
    animations, EXIF orientation, transparency on :data:`BACKGROUND`, 16-bit scaled to 8."""
    path = source if isinstance(source, (str, Path)) else "image"
    if isinstance(source, (str, Path)):
        source = read_file(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings(), Image.open(stream) as image:
        # Corrupt EXIF only loses orientation; PIL's warning about it is noise per file.
        warnings.filterwarnings("ignore", message="Corrupt EXIF", category=UserWarning)
        check_pixels(*image.size, path)  # Image.open read the header only
        if image.format not in ALLOWED_FORMATS:
            raise ValueError(f"format {image.format} is not an allowed image format")
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF/WebP/multi-page TIFF: the first frame
        image.load()
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # corrupt EXIF must not lose a readable image
            oriented = image
        return np.array(to_rgb_array(oriented if oriented is not None else image), copy=True)
