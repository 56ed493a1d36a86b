"""Figures for the callbacks, drawn off the training thread.

The training thread hands a drawing of plain data to :class:`FigureWorker`, one background
thread, and goes on. The thread draws the matplotlib figures and
picture grids (both below) and sends the written files to the loggers.

The matplotlib figures: plain data (NumPy arrays, lists, strings) in, a PNG file out.

They are drawn on the figure thread, so they use matplotlib's
object-oriented API on the Agg canvas, never ``pyplot``'s global state. Each drawing in
:data:`DRAWINGS` returns a figure; :func:`draw` writes it.

Grids of pictures with captions, drawn with Pillow (NumPy in, PNG out; no matplotlib).

A grid of 32 pictures drawn as 32 matplotlib axes costs 1-2 s of CPU on the figure thread
(layout, one artist per caption, PNG encoding of a large canvas); pasting the pictures into
one image costs a few milliseconds. Used for ``train_batch.png``, ``val_predictions.png`` and
the Grad-CAM panels.
"""

from __future__ import annotations

import io
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier import report_items
from classifier.file_io import atomic_write_bytes


def new_figure(
    figsize: tuple[float, float], rows: int = 1, cols: int = 1, squeeze: bool = True
) -> tuple[Any, Any]:
    """A figure and its axes on its own Agg canvas (no ``pyplot`` state: thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=squeeze)


def save_figure(figure: Any, path: Path) -> Path:
    """Write ``figure`` as PNG atomically."""
    buffer = io.BytesIO()
    # Fast compression: 40 % less time for 20 % more bytes (figures are rewritten often).
    figure.savefig(
        buffer, format="png", dpi=110, bbox_inches="tight", pil_kwargs={"compress_level": 1}
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def bar_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str,
) -> Any:
    """Grouped vertical bars, one group per label; rotates names when there are many."""
    width = max(6.0, min(24.0, 0.35 * len(labels) * max(1, len(series))))
    figure, axes = new_figure((width, 4.5))
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


def heatmap(matrix: np.ndarray, names: list[str], title: str, normalized: bool) -> Any:
    """A seaborn heatmap with class names; annotated while it stays readable."""
    import seaborn as sns

    side = max(5.0, min(28.0, 0.45 * len(names) + 3))
    figure, axes = new_figure((side + 1.5, side))
    sns.heatmap(
        np.asarray(matrix),
        annot=len(names) <= 25,
        fmt=".2f" if normalized else "d",
        cmap="Blues",
        xticklabels=names,
        yticklabels=names,
        vmin=0,
        vmax=1 if normalized else None,
        square=True,
        cbar=True,
        ax=axes,
        annot_kws={"fontsize": 8},
    )
    axes.set(title=title, xlabel="predicted", ylabel="true")
    return figure


def loss_history(rows: list[dict[str, float]]) -> Any:
    """Training and validation loss per epoch."""
    epochs = [r["epoch"] + 1 for r in rows]
    figure, axes = new_figure((7, 4.5))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        axes.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    axes.legend()
    axes.grid(alpha=0.3)
    return figure


def metrics_history(rows: list[dict[str, float]]) -> Any:
    """Accuracy-type metrics per epoch, and the learning rate."""
    epochs = [r["epoch"] + 1 for r in rows]
    figure, (left, right) = new_figure((12, 4.5), 1, 2)
    for key in ("train_top1", "val_top1", "val_balanced_acc", "val_f1_macro"):
        left.plot(epochs, [r[key] for r in rows], marker="o", label=key)
    left.set(title="Metrics", xlabel="epoch", ylim=(0, 1.02))
    left.legend()
    left.grid(alpha=0.3)
    right.plot(epochs, [r["lr"] for r in rows], marker="o", color="tab:gray")
    right.set(title="Learning rate (end of epoch)", xlabel="epoch")
    right.grid(alpha=0.3)
    return figure


def reliability_diagram(
    curves: Mapping[str, tuple[Sequence[float], float]], counts: Sequence[float], title: str
) -> Any:
    """Accuracy against confidence per equal-width bin, one curve per entry of ``curves``
    (label -> (accuracy per bin, ECE)), with the images per bin (``counts``) below."""
    bins = len(counts)
    figure, (curve, below) = new_figure((6.5, 6.5), rows=2, squeeze=True)
    figure.subplots_adjust(hspace=0.35)
    centres = [(i + 0.5) / bins for i in range(bins)]
    curve.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for (name, (accuracy, ece)), style in zip(curves.items(), ("o--", "o-", "o:"), strict=False):
        curve.plot(centres, accuracy, style, label=f"{name}: ECE {ece:.3f}")
    curve.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    curve.legend(loc="upper left", fontsize=8)
    below.bar(centres, counts, width=1 / bins * 0.9, color="tab:blue")
    below.set(xlim=(0, 1), xlabel="confidence (after scaling)", ylabel="images")
    return figure


def risk_coverage(found: Mapping[str, Any], target: float, stage: str) -> Any:
    """Accuracy of the accepted predictions against the share accepted, keeping the most
    confident first (``found["risk_coverage"]``), with the rule's own point (it also rejects
    by feature distance, so it may lie off the curve) and the target accuracy."""
    curve = found["risk_coverage"]
    figure, axes = new_figure((6.5, 4.5))
    axes.plot(curve["coverage"], curve["accuracy"], "-", label="by calibrated confidence")
    axes.axhline(target, color="grey", linestyle=":", label=f"target {target:.3f}")
    if found.get("accuracy_accepted") is not None:
        point = (found["coverage"], found["accuracy_accepted"])
        axes.plot(*point, "o", color="tab:red", label=f"the rule: {point[0]:.1%} accepted")
    lowest = min([*curve["accuracy"], target, found.get("accuracy_all") or 1.0])
    axes.set(
        xlim=(0, 1.02),
        ylim=(max(0.0, lowest - 0.02), 1.005),
        xlabel="share of images accepted (coverage)",
        ylabel="accuracy of the accepted",
        title=f"{stage}: risk-coverage ({found['images']} images)",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    return figure


def lr_finder(lrs: Sequence[float], losses: Sequence[float], suggestion: float | None) -> Any:
    """Smoothed training loss against the learning rate, with the suggestion marked."""
    figure, axes = new_figure((7.0, 4.5))
    axes.plot(lrs, losses)
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)")
    title = "Learning-rate finder"
    if suggestion is not None and math.isfinite(suggestion):
        axes.axvline(suggestion, color="tab:red", linestyle="--")
        title += f": suggestion {suggestion:.3g}"
    axes.set_title(title)
    return figure


#: Every figure by name.
DRAWINGS: dict[str, Callable[..., Any]] = {
    "bar_chart": bar_chart,
    "heatmap": heatmap,
    "loss_history": loss_history,
    "metrics_history": metrics_history,
    "reliability_diagram": reliability_diagram,
    "lr_finder": lr_finder,
    "risk_coverage": risk_coverage,
}


def draw(name: str, path: Path, *args: Any) -> Path:
    """Draw figure ``name`` of :data:`DRAWINGS` with ``args`` and write it to ``path``."""
    return save_figure(DRAWINGS[name](*args), path)


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


Submit = Callable[[str, Callable[[], None]], None]


class FigureWorker:
    """One background thread that renders figures; the newest request of each kind wins.

    :meth:`submit` returns at once. A request replaces a waiting one of the same ``kind`` (a
    newer confusion matrix makes the older one pointless), so a slow machine draws fewer
    figures, never stale ones. A figure that fails to render is a warning, never a lost run.
    :meth:`wait` blocks until everything submitted is drawn (the end of the command).
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pending: dict[str, Callable[[], None]] = {}
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, draw: Callable[[], None]) -> None:
        """Queue ``draw`` (replacing a waiting request of the same ``kind``)."""
        with self._lock:
            self._pending.pop(kind, None)
            self._pending[kind] = draw
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="classifier-figures", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending:
                    self._lock.wait()
                kind = next(iter(self._pending))
                draw = self._pending.pop(kind)
                self._busy = True
            try:
                draw()
            except Exception as error:  # a figure must never cost the run
                warnings.warn(f"figure {kind} could not be drawn: {error}", stacklevel=1)
            finally:
                # Dropped before the thread waits again: a finished drawing's closure holds its
                # callback, and through it the trainer and every callback, which this daemon
                # thread would keep alive past the interpreter's exit (their open files were
                # then never flushed).
                del draw
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def wait(self, timeout: float = 120.0) -> bool:
        """Wait until every submitted figure is drawn; ``False`` if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True


_WORKER = FigureWorker()


def submit_figure(kind: str, draw: Callable[[], None]) -> None:
    """Render ``draw`` on the background figure thread."""
    _WORKER.submit(kind, draw)


def wait_for_figures(timeout: float = 120.0) -> None:
    """Block until the figures submitted so far are written (end of a command, Ctrl-C,
    SIGTERM); warn, instead of hanging, if they take longer than ``timeout`` seconds."""
    if not _WORKER.wait(timeout):
        warnings.warn(f"figures still drawing after {timeout:.0f} s were skipped", stacklevel=2)


#: What a first drawing is assumed to cost (seconds) before one has been timed.
FIRST_DRAW_COST = 0.5


class DrawBudget:
    """Decides when a callback redraws its per-epoch figures, so drawing stays cheap.

    Figures render on the :class:`FigureWorker` thread, but on a machine with few cores that
    thread still takes CPU from training: rendering a PNG costs a fixed 0.1-1 s whatever the
    epoch's length. A redraw is due when the drawing time so far, plus what the last drawing
    cost (``first_cost`` before the first), fits in ``share`` of the wall time since fit
    started; otherwise the newest figure waits. So a long run shows its plots from its first
    epochs on, while a short one draws them once, at the end: :meth:`flush` submits what waits
    when fit ends. Outside ``fit`` (``validate``, ``test``) figures are submitted at once.

    Args:
        share: the largest fraction of training wall time spent drawing: 0 draws only at the
            end of fit, 1 draws every time.
        submit: where drawings go (default: the background :class:`FigureWorker`).
        first_cost: the cost assumed for the first drawing, in seconds.
    """

    def __init__(
        self, share: float, submit: Submit = submit_figure, first_cost: float = FIRST_DRAW_COST
    ) -> None:
        self.share = share
        self.submit = submit
        self.first_cost = first_cost
        self.restart()

    def restart(self) -> None:
        """Start the clock with nothing spent or waiting (at the start of fit)."""
        self.start = time.monotonic()
        self.spent = 0.0
        self.last_cost = self.first_cost
        self.pending: dict[str, Callable[[], None]] = {}

    def due(self) -> bool:
        """Whether a drawing now stays within the budget."""
        if self.share <= 0:
            return False
        elapsed = time.monotonic() - self.start
        return self.share >= 1 or self.spent + self.last_cost <= self.share * elapsed

    def request(self, trainer: pl.Trainer, kind: str, draw: Callable[[], None]) -> None:
        """Submit ``draw`` if it is due (or not in ``fit``), else keep it for :meth:`flush`.

        ``kind`` names the figure (a newer request of the same kind replaces an older one).
        """
        if trainer.state.fn != "fit" or self.due():
            self._run(kind, draw)
        else:
            self.pending[kind] = draw

    def retry(self) -> None:
        """Submit the figure that waits longest if the budget now allows it (one per call:
        what a drawing costs is known only once it is drawn)."""
        if self.pending and self.due():
            self._run(*next(iter(self.pending.items())))

    def flush(self) -> None:
        """Submit every figure that waits (end of fit)."""
        while self.pending:
            self._run(*next(iter(self.pending.items())))

    def _run(self, kind: str, draw: Callable[[], None]) -> None:
        self.pending.pop(kind, None)

        def timed() -> None:
            start = time.monotonic()
            try:
                draw()
            finally:
                self.last_cost = time.monotonic() - start
                self.spent += self.last_cost

        self.submit(f"{kind}@{id(self)}", timed)


def last_epoch(trainer: pl.Trainer, epoch: int | None = None) -> bool:
    """Whether ``epoch`` (default: the current one) is the last that ``max_epochs`` allows
    (never, when only ``max_steps`` or time bounds the run: Lightning sets ``max_epochs=-1``)."""
    epoch = trainer.current_epoch if epoch is None else epoch
    limit = trainer.max_epochs
    return limit is not None and limit >= 0 and epoch + 1 >= limit


def epoch_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Whether a per-epoch output is due after this validation: every ``every_n_epochs`` epochs
    and at the last epoch, never during the sanity check."""
    if trainer.sanity_checking:
        return False
    return (trainer.current_epoch + 1) % max(1, every_n_epochs) == 0 or last_epoch(trainer)


#: Default share of training wall time each plotting callback may spend redrawing figures
#: (0.5 % each; the six plotting callbacks of the shipped configs together at most 3 %).
PLOT_TIME_SHARE = 0.005


class PlottingCallback(Callback):
    """Base of callbacks that redraw figures during fit under a :class:`DrawBudget`.

    Subclasses pass their drawing to ``self.draws.request(trainer, draw)``; what waits is drawn
    when the budget allows it at the start of a later epoch, at the end of fit, or when
    training is interrupted with Ctrl-C.
    """

    def __init__(self, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        self.draws = DrawBudget(plot_time_share)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the drawing budget's clock."""
        self.draws.restart()

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw what waits if the budget now allows it."""
        self.draws.retry()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the newest figures if they wait."""
        self.draws.flush()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl-C, SIGTERM or an error, draw what waits so the run folder shows the last
        epoch. After SIGTERM the drawing is not waited for here: the pre-emption checkpoint
        comes first (a scheduler's grace period is short); the command waits before it ends."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self.draws.flush()
        if not isinstance(exception, SIGTERMException):
            wait_for_figures()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Wait for the figures before Lightning closes the loggers that receive them (the
        end-of-fit figures render while the export runs in ``on_fit_end``)."""
        wait_for_figures()


def log_image(
    trainer: pl.Trainer, key: str, path: Path, step: int, section: str = "", alt: str = ""
) -> None:
    """Send a PNG to every logger that takes images (TensorBoard, WandB), at ``step``: the step
    the figure shows, taken when it was requested (it is drawn later, in the background).
    With ``section`` the figure is also handed to ``report.html``'s section of that id
    (:func:`classifier.report_items.figure`), ``alt`` its text."""
    if section:
        report_items.figure(path, section, alt)
    for logger in trainer.loggers:
        name = type(logger).__name__
        target: Any = logger
        try:
            if name == "TensorBoardLogger":
                from PIL import Image

                pixels = np.asarray(Image.open(path).convert("RGB"))
                target.experiment.add_image(key, pixels, step, dataformats="HWC")
            elif name == "WandbLogger":
                target.log_image(key=key, images=[str(path)], step=step)
        except Exception as error:  # a logger hiccup must not stop training
            warnings.warn(f"could not log {key} to {name}: {error}", stacklevel=2)
