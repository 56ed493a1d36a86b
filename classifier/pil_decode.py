"""Decoding an image file into RGB pixels with PIL, without torch.

The rules every reader shares (which files are images, which formats may be opened, how large
an image may be, how odd modes become RGB) live here, so that ``classifier-predict`` (which
must run where torch is not installed) reads images exactly as training does.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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


def check_pixels(width: int, height: int, path: str | Path) -> None:
    """Refuse an image larger than PIL's decompression-bomb limit, before it is decoded.

    Raises:
        Image.DecompressionBombError: ``width * height`` exceeds ``Image.MAX_IMAGE_PIXELS``.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(PIL.Image.MAX_IMAGE_PIXELS); a decompression bomb?"
        )


def decode_pil(path: Path) -> np.ndarray:
    """Decode ``path`` fully with PIL into an RGB ``uint8`` ``HxWx3`` array (strict: a truncated
    file raises): decompression-bomb check from the header, allowed formats only, the first frame
    of animations, EXIF orientation, transparency on :data:`BACKGROUND`, 16-bit scaled to 8."""
    with warnings.catch_warnings(), Image.open(path) as image:
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
