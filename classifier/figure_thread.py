"""Figures for the callbacks, drawn off the training thread.

The training thread hands a drawing of plain data to :class:`FigureWorker`, one background
thread, and goes on. The thread draws the matplotlib figures (:mod:`classifier.charts`) and
picture grids (:mod:`classifier.charts`) and sends the written files to the loggers.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

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


def log_image(trainer: pl.Trainer, key: str, path: Path, step: int) -> None:
    """Send a PNG to every logger that takes images (TensorBoard, WandB), at ``step``: the step
    the figure shows, taken when it was requested (it is drawn later, in the background)."""
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
