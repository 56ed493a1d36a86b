"""Picture grids drawn with Pillow: what a user sees in train_batch.png, val_predictions.png and
the Grad-CAM panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier.figures import CELL, as_uint8, heat_overlay, picture_grid, save_png


def _square(colour: tuple[int, int, int], side: int = 32) -> np.ndarray:
    return np.full((side, side, 3), colour, dtype=np.uint8)


def test_every_picture_lands_in_its_cell_at_full_size(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = picture_grid([_square(c) for c in colours], ["a", "b", "c"], ["black"] * 3, "t", cols=2)
    path = save_png(grid, tmp_path / "grid.png")
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[:2]
    assert width > 2 * CELL and height > 2 * CELL  # two rows of two cells
    # A 32 px picture is enlarged to the cell with crisp pixels: the cell's centre is its colour.
    for index, colour in enumerate(colours):
        found = np.all(pixels == colour, axis=-1)
        assert found.sum() == CELL * CELL, (index, found.sum())


def test_captions_take_their_colour_and_long_names_stay_inside_the_cell() -> None:
    pictures = [_square((255, 255, 255)) for _ in range(2)]
    caption = "pred: " + "x" * 200
    grid = np.asarray(picture_grid(pictures, [caption, "ok"], ["red", "black"], "", cols=2))
    reds = np.argwhere((grid[..., 0] > 150) & (grid[..., 1] < 80) & (grid[..., 2] < 80))
    assert len(reds)  # the misclassified caption is red
    assert reds[:, 1].max() < 2 * CELL  # and clipped to its own cell, not over the next one


def test_non_square_pictures_keep_their_shape() -> None:
    wide = np.full((20, 80, 3), (10, 200, 30), dtype=np.uint8)
    grid = np.asarray(picture_grid([wide], ["w"], ["black"], "", cols=1))
    blacks = np.argwhere(np.all(grid == (10, 200, 30), axis=-1))
    span_y = blacks[:, 0].max() - blacks[:, 0].min() + 1
    span_x = blacks[:, 1].max() - blacks[:, 1].min() + 1
    assert span_x == CELL and span_y == CELL // 4


def test_as_uint8_accepts_tensors_and_floats() -> None:
    chw = torch.zeros(3, 4, 5)
    chw[0] = 1.0
    out = as_uint8(chw)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 255).all() and (out[..., 1] == 0).all()
    assert as_uint8(torch.full((3, 2, 2), 300.0)).max() == 255  # clipped, not wrapped
    assert as_uint8(np.zeros((1, 2, 2), dtype=np.uint8)).shape == (2, 2, 3)


def test_heat_overlay_marks_high_values_red_and_low_values_blue() -> None:
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    heat = np.zeros((2, 2))
    heat[:, 1] = 1.0  # right half hot
    out = heat_overlay(grey, heat).astype(int)
    left, right = out[:, :8].mean(axis=(0, 1)), out[:, -8:].mean(axis=(0, 1))
    assert right[0] > right[2] + 50  # red
    assert left[2] > left[0] + 50  # blue
