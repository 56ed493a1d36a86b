"""Reading one image file into an RGB ``uint8`` tensor, the same way everywhere.

Training, evaluation, prediction and the ONNX verification all call :func:`load_rgb`, so an
image of an unusual kind (CMYK, 16-bit, palette with transparency, rotated by EXIF) becomes the
same pixels in every one of them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
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
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image extension and is not a hidden or resource-fork file."""
    name = Path(path).name
    return not name.startswith((".", "._")) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb_array(image: Image.Image) -> np.ndarray:
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


def load_pil(path: Path) -> torch.Tensor:
    """Decode ``path`` fully with PIL into an RGB ``uint8`` ``3xHxW`` tensor (strict: a
    truncated file raises)."""
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
        array = _to_rgb_array(oriented if oriented is not None else image)
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).contiguous()


def load_rgb(path: str | Path) -> torch.Tensor:
    """Read an image file as an RGB ``uint8`` tensor of shape ``3xHxW``.

    JPEGs are decoded by torchvision's libjpeg-turbo decoder (about twice as fast as PIL);
    everything else, and any JPEG that decoder refuses (CMYK, progressive oddities), goes through
    PIL with EXIF orientation applied, transparency composited on :data:`BACKGROUND`, and 16-bit
    data scaled to 8 bits. Every route reads the image's size from its header first and refuses
    a decompression bomb (:func:`check_pixels`) before decoding.

    Raises:
        OSError, ValueError, Image.DecompressionBombError: the file cannot be used.
    """
    path = Path(path)
    if path.suffix.lower() in _JPEG_SUFFIXES:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        data = read_file(str(path))
        frame = jpeg_frame(data.numpy().tobytes())
        # No frame header, or CMYK/YCCK (PIL handles Adobe's colour inversion): PIL decodes.
        if frame is not None and frame[2] != 4:
            check_pixels(frame[1], frame[0], path)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image: torch.Tensor = decode_jpeg(
                        data, mode=ImageReadMode.RGB, apply_exif_orientation=True
                    )
                return image
            except (RuntimeError, ValueError):
                pass
    return load_pil(path)


#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_frame(raw: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` from a JPEG's frame header, walking its segments (an EXIF
    thumbnail's own header is skipped with its segment); ``None`` if there is none."""
    if not raw.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            at += 2
            continue
        if marker < 0xC0:  # not a segment marker: the decoder may read this differently
            return None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if marker in _SOF_MARKERS and at + 10 <= len(raw):
            height = int.from_bytes(raw[at + 5 : at + 7], "big")
            width = int.from_bytes(raw[at + 7 : at + 9], "big")
            return height, width, raw[at + 9]
        at += 2 + length
    return None
