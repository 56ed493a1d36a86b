"""Figures for the callbacks (matplotlib with the Agg backend, imported lazily)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from classifier.files import atomic_write_bytes


class DrawBudget:
    """Decides when a callback redraws its per-epoch figures, so drawing stays cheap.

    Rendering a PNG costs a fixed 0.3-1 s of CPU whatever the epoch's length: on short epochs,
    redrawing four callbacks' figures every epoch slows training by 10-40 %. A redraw is due
    when the drawing time so far, plus what the last drawing cost, fits in ``share`` of the
    wall time since fit started; otherwise the newest figure waits. The first epoch always
    draws (so a run shows its plots early) and :meth:`flush` draws what waits at the end of
    fit. Outside ``fit`` (``validate``, ``test``) figures are drawn at once.

    Args:
        share: the largest fraction of training wall time spent drawing: 0 draws only at the
            end of fit, 1 draws every time.
    """

    def __init__(self, share: float) -> None:
        self.share = share
        self.restart()

    def restart(self) -> None:
        """Start the clock with nothing spent or waiting (at the start of fit)."""
        self.start = time.monotonic()
        self.spent = 0.0
        self.last_cost = 0.0
        self.pending: Callable[[], None] | None = None

    def due(self) -> bool:
        """Whether a drawing now stays within the budget."""
        if self.share <= 0:
            return False
        elapsed = time.monotonic() - self.start
        return self.share >= 1 or self.spent + self.last_cost <= self.share * elapsed

    def request(self, trainer: pl.Trainer, draw: Callable[[], None]) -> None:
        """Call ``draw`` now if it is due (or not in ``fit``), else keep it for :meth:`flush`."""
        if trainer.state.fn != "fit" or self.due():
            self._run(draw)
        else:
            self.pending = draw

    def flush(self) -> None:
        """Draw the figure that waits, if any (end of fit)."""
        if self.pending is not None:
            self._run(self.pending)

    def _run(self, draw: Callable[[], None]) -> None:
        self.pending = None
        start = time.monotonic()
        draw()
        self.last_cost = time.monotonic() - start
        self.spent += self.last_cost


#: Default share of training wall time each plotting callback may spend redrawing figures
#: (four plotting callbacks together: at most 2 %).
PLOT_TIME_SHARE = 0.005


class PlottingCallback(Callback):
    """Base of callbacks that redraw figures during fit under a :class:`DrawBudget`.

    Subclasses pass their drawing to ``self.draws.request(trainer, draw)``; what waits is drawn
    at the end of fit, or when training is interrupted with Ctrl-C.
    """

    def __init__(self, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        self.draws = DrawBudget(plot_time_share)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the drawing budget's clock."""
        self.draws.restart()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the newest figures if they wait."""
        self.draws.flush()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl-C, draw what waits so the run folder shows the last finished epoch."""
        if isinstance(exception, KeyboardInterrupt):
            self.draws.flush()


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
