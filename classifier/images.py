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


def load_pil(path: Path) -> torch.Tensor:
    """Decode ``path`` fully with PIL into an RGB ``uint8`` ``3xHxW`` tensor (strict: a
    truncated file raises)."""
    with warnings.catch_warnings(), Image.open(path) as image:
        # Corrupt EXIF only loses orientation; PIL's warning about it is noise per file.
        warnings.filterwarnings("ignore", message="Corrupt EXIF", category=UserWarning)
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
    data scaled to 8 bits.

    Raises:
        OSError, ValueError, Image.DecompressionBombError: the file cannot be used.
    """
    path = Path(path)
    if path.suffix.lower() in _JPEG_SUFFIXES:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = read_file(str(path))
                image: torch.Tensor = decode_jpeg(
                    data, mode=ImageReadMode.RGB, apply_exif_orientation=True
                )
            if _is_cmyk_jpeg(data):
                raise ValueError("CMYK JPEG: decoded by PIL for its Adobe colour handling")
            return image
        except (RuntimeError, ValueError):
            pass
    return load_pil(path)


def _is_cmyk_jpeg(data: torch.Tensor) -> bool:
    """Whether a JPEG's frame header declares 4 components (CMYK/YCCK)."""
    raw = data.numpy().tobytes()
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = raw.find(marker)
        if at != -1 and at + 9 < len(raw):
            return raw[at + 9] == 4
    return False
