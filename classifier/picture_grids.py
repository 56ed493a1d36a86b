"""Grids of pictures with captions, drawn with Pillow (NumPy in, PNG out; no matplotlib).

A grid of 32 pictures drawn as 32 matplotlib axes costs 1-2 s of CPU on the figure thread
(layout, one artist per caption, PNG encoding of a large canvas); pasting the pictures into
one image costs a few milliseconds. Used for ``train_batch.png``, ``val_predictions.png`` and
the Grad-CAM panels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifier.files import atomic_write_bytes

#: Colours a caption may use, by name.
COLOURS = {"black": (0, 0, 0), "red": (200, 0, 0), "green": (0, 128, 0)}
#: Side of one picture's cell in pixels (pictures are scaled to fit, keeping their shape).
CELL = 160
PAD, FONT_SIZE, TITLE_SIZE = 6, 12, 15


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(picture: np.ndarray, cell: int) -> Any:
    """``picture`` (``HxWx3`` uint8) scaled to fit a ``cell`` square: crisp pixels when
    enlarged (small images stay readable), smooth when reduced."""
    from PIL import Image

    image = Image.fromarray(picture)
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    return image.resize(size, resample, reducing_gap=2.0 if scale < 1 else None)


def as_uint8(picture: Any) -> np.ndarray:
    """``HxWx3`` uint8 from a NumPy array or tensor, ``HxWx3`` or ``3xHxW``, uint8 or float
    in [0, 1]."""
    array = np.asarray(picture)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


def heat_overlay(picture: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``picture`` blended with ``heat`` (``hxw`` in [0, 1], resized to the picture) in the
    "jet" colour map: blue for 0, red for 1."""
    from PIL import Image

    height, width = picture.shape[:2]
    heat_image = Image.fromarray(np.clip(heat * 255, 0, 255).astype(np.uint8))
    x = np.asarray(heat_image.resize((width, height), Image.Resampling.BILINEAR)) / 255.0
    jet = np.stack([np.clip(1.5 - np.abs(4 * x - k), 0, 1) for k in (3, 2, 1)], axis=-1)
    blended = (1 - alpha) * picture / 255.0 + alpha * jet
    return (blended * 255 + 0.5).astype(np.uint8)


def picture_grid(
    pictures: Sequence[np.ndarray],
    captions: Sequence[str],
    colours: Sequence[str],
    title: str,
    cols: int = 8,
    cell: int = CELL,
) -> Any:
    """One image: ``title`` on top, then ``pictures`` (``HxWx3`` uint8) in rows of ``cols``,
    each with its caption (lines split at ``\\n``) in its colour (a name of :data:`COLOURS`)."""
    from PIL import Image, ImageDraw

    font, title_font = _font(FONT_SIZE), _font(TITLE_SIZE)
    cols = max(1, min(cols, len(pictures)))
    rows = max(1, math.ceil(len(pictures) / cols))
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    line = FONT_SIZE + 3
    box_w, box_h = cell + PAD, cell + PAD + lines * line
    top = TITLE_SIZE + 2 * PAD
    canvas = Image.new("RGB", (cols * box_w + PAD, top + rows * box_h + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill=(0, 0, 0), font=title_font)
    for i, (picture, caption, colour) in enumerate(zip(pictures, captions, colours, strict=True)):
        x, y = PAD + (i % cols) * box_w, top + (i // cols) * box_h
        image = _fit(picture, cell)
        canvas.paste(image, (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
        fill = COLOURS.get(colour, (0, 0, 0))
        for n, text in enumerate(caption.split("\n")):
            draw.text((x, y + cell + 2 + n * line), _clip(draw, text, font, cell), fill, font)
    return canvas


def _clip(draw: Any, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_png(image: Any, path: Path) -> Path:
    """Write a Pillow image as PNG, atomically (fast compression: figures are rewritten often)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    atomic_write_bytes(path, buffer.getvalue())
    return path
