"""Figures for the callbacks (matplotlib with the Agg backend, imported lazily)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from classifier.files import atomic_write_bytes


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> Path:
    """Write ``figure`` as PNG atomically and close it."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def log_image(trainer: pl.Trainer, key: str, path: Path) -> None:
    """Send a PNG to every logger that takes images (TensorBoard, WandB)."""
    for logger in trainer.loggers:
        name = type(logger).__name__
        target: Any = logger
        try:
            if name == "TensorBoardLogger":
                from PIL import Image

                pixels = np.asarray(Image.open(path).convert("RGB"))
                target.experiment.add_image(key, pixels, trainer.global_step, dataformats="HWC")
            elif name == "WandbLogger":
                target.log_image(key=key, images=[str(path)], step=trainer.global_step)
        except Exception as error:  # a logger hiccup must not stop training
            import warnings

            warnings.warn(f"could not log {key} to {name}: {error}", stacklevel=2)


def bar_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
) -> Any:
    """Grouped vertical bars, one group per label; rotates names when there are many."""
    plt = pyplot()
    width = max(6.0, min(24.0, 0.35 * len(labels) * max(1, len(series))))
    figure, axes = plt.subplots(figsize=(width, 4.5))
    x = np.arange(len(labels))
    bar = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        axes.bar(x + (i - (len(series) - 1) / 2) * bar, values, bar, label=name)
    axes.set_xticks(x)
    axes.set_xticklabels(
        labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center"
    )
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    if len(series) > 1:
        axes.legend()
    axes.grid(axis="y", alpha=0.3)
    return figure
