"""Reading one image file into an RGB ``uint8`` tensor, the same way everywhere.

Training, evaluation, prediction and the ONNX verification all call :func:`load_rgb`, so an
image of an unusual kind (CMYK, 16-bit, palette with transparency, rotated by EXIF) becomes the
same pixels in every one of them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from classifier.pil_decode import (
    ALLOWED_FORMATS,
    BACKGROUND,
    IMAGE_EXTENSIONS,
    check_pixels,
    decode_pil,
    is_image_file,
    read_file,
)

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND",
    "IMAGE_EXTENSIONS",
    "check_pixels",
    "is_image_file",
    "jpeg_frame",
    "load_pil",
    "load_rgb",
]


def load_pil(source: Path | bytes) -> torch.Tensor:
    """Decode an image file (its path or its bytes) fully with PIL
    (:func:`~classifier.pil_decode.decode_pil`) into an RGB ``uint8`` ``3xHxW`` tensor
    (strict: a truncated file raises)."""
    return torch.from_numpy(decode_pil(source)).permute(2, 0, 1).contiguous()


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
    raw = read_file(path)  # the same size limit and non-blocking open on every route
    if path.suffix.lower() in _JPEG_SUFFIXES:
        from torchvision.io import ImageReadMode, decode_jpeg

        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        frame = jpeg_frame(raw)
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
    return load_pil(raw)


_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})

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
