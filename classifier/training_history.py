"""``TrainingHistory``: per-epoch metrics as ``history.csv`` and two plots, kept across resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module
from classifier.figures import PLOT_TIME_SHARE, PlottingCallback, draw, log_image
from classifier.file_io import run_dir, write_csv

COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_balanced_acc",
    "val_f1_macro",
    "lr",
)


class TrainingHistory(PlottingCallback):
    """Record one row per validated epoch; write ``history.csv``, ``loss_history.png`` and
    ``metrics_history.png``.

    Rows are written when the epoch's validation ends (so the last epoch is included) and are
    part of the checkpoint, so a resumed run continues the table instead of restarting it.
    The train loss is averaged over the epoch's steps on this process without a per-step sync.
    ``history.csv`` is rewritten every epoch; the plots are redrawn while that stays within
    ``plot_time_share`` of the run's time, and always at the end of fit.

    Args:
        plots: also write the PNG plots.
        plot_time_share: the largest fraction of training wall time spent redrawing the plots
            (0: only at the end of fit; 1: every epoch).
    """

    def __init__(self, plots: bool = True, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        super().__init__(plot_time_share)
        self.plots = plots
        self.rows: list[dict[str, float]] = []
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's loss average."""
        super().on_train_epoch_start(trainer, pl_module)
        self._loss_sum, self._steps = None, 0

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Add the batch's loss on device (no host sync): ``batch_loss`` when the model gives
        it (Lightning divides ``loss`` by the accumulation)."""
        loss = (
            outputs.get("batch_loss", outputs.get("loss")) if isinstance(outputs, dict) else outputs
        )
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().double()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._steps += 1

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Append the epoch's row and rewrite the files (before checkpoints are saved)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics

        def value(key: str) -> float:
            item = metrics.get(key)
            return float(item) if item is not None else float("nan")

        train_loss = (
            float(self._loss_sum) / self._steps if self._loss_sum is not None else float("nan")
        )
        top1 = classifier_module(pl_module).train_top1
        train_top1 = float(top1.compute()) if top1.update_count else float("nan")
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_loss": train_loss,
            "train_top1": train_top1,
            "val_loss": value("val/loss"),
            "val_top1": value("val/top1"),
            "val_balanced_acc": value("val/balanced_acc"),
            "val_f1_macro": value("val/f1_macro"),
            "lr": _head_lr(trainer.optimizers[0].param_groups) if trainer.optimizers else math.nan,
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        folder = run_dir(trainer)
        write_csv(folder / "history.csv", COLUMNS, [[r[c] for c in COLUMNS] for r in self.rows])
        best = max(
            self.rows, key=lambda r: -math.inf if r["val_top1"] != r["val_top1"] else r["val_top1"]
        )
        shown = {k: best[f"val_{k}"] for k in ("top1", "balanced_acc", "f1_macro", "loss")}
        heading = f"Validation, best epoch {int(best['epoch']) + 1}"
        report_items.cards(folder, "summary", "summary/val", shown, heading)
        report_items.note(folder, "summary", "summary/epochs", f"{len(self.rows)} epoch(s)")
        if self.plots:
            rows, step = [dict(r) for r in self.rows], trainer.global_step
            self.draws.request(trainer, "history", lambda: self._plot(trainer, rows, folder, step))

    @staticmethod
    def _plot(trainer: pl.Trainer, rows: list[dict[str, float]], folder: Path, step: int) -> None:
        for name, key in (("loss_history", "loss"), ("metrics_history", "metrics")):
            path = draw(name, folder / f"{name}.png", rows)
            log_image(trainer, f"history/{key}", path, step, "curves", key)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The rows so far and the running epoch's loss sum (for mid-epoch resume)."""
        loss = float(self._loss_sum) if self._loss_sum is not None else None
        return {"rows": self.rows, "loss_sum": loss, "steps": self._steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the rows (and a partly done epoch) of a resumed run."""
        self.rows = list(state_dict.get("rows", []))
        loss = state_dict.get("loss_sum")
        self._loss_sum = None if loss is None else torch.tensor(loss, dtype=torch.float64)
        self._steps = int(state_dict.get("steps", 0))


def _head_lr(groups: list[dict[str, Any]]) -> float:
    """The rate of the classifier head's group (``lr`` x schedule; backbone groups may be
    scaled below it), or of the first group."""
    named = [g for g in groups if g.get("name") in ("head", "network")]
    return float((named or groups)[0]["lr"])
