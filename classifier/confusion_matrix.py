"""``ConfusionMatrix``: heatmaps, counts and the most-confused pairs, from the model's metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module
from classifier.figures import PLOT_TIME_SHARE, PlottingCallback, draw, epoch_due, log_image
from classifier.file_io import run_dir, write_csv


def most_confused(confmat: torch.Tensor, class_names: list[str], top: int) -> list[list[Any]]:
    """``[true, predicted, count, share of the true class]`` for the largest off-diagonal cells."""
    errors = confmat.clone()
    errors.fill_diagonal_(0)
    support = confmat.sum(1).clamp(min=1)
    values, flat = errors.flatten().topk(min(top, errors.numel()))
    rows = []
    for count, index in zip(values.tolist(), flat.tolist(), strict=True):
        if count <= 0:
            break
        true, pred = divmod(index, confmat.shape[1])
        rows.append(
            [
                class_names[true],
                class_names[pred],
                int(count),
                round(count / float(support[true]), 4),
            ]
        )
    return rows


def focus_classes(confmat: torch.Tensor, limit: int) -> list[int]:
    """The ``limit`` classes involved in most errors (rows and columns), in class order."""
    errors = confmat.clone()
    errors.fill_diagonal_(0)
    involvement = errors.sum(0) + errors.sum(1)
    return sorted(involvement.topk(limit).indices.tolist())


class ConfusionMatrix(PlottingCallback):
    """Confusion matrices at the end of validation (every N epochs) and of test.

    Reuses the counts the model accumulated during the epoch (its ``StageMetrics``, synchronised
    across processes; no extra forward passes, sanity-check batches excluded). Writes
    ``confusion_matrix_<stage>.png`` (counts), ``confusion_matrix_<stage>_normalized.png`` (rows
    sum to 1), ``confusion_matrix_<stage>.csv`` and ``most_confused_<stage>.csv``. During fit
    the CSV files follow every N epochs and the heatmaps are redrawn while that stays within
    ``plot_time_share`` of the run's time (always at the end of fit).

    Args:
        every_n_epochs: write the validation matrix every N epochs, and at the last epoch
            ``max_epochs`` allows (a run stopped earlier keeps its last due matrix).
        max_classes: above this many classes the plots show the ``max_classes`` classes involved
            in most errors (the CSV files keep every class).
        top_pairs: rows in the most-confused-pairs list.
        plot_time_share: the largest fraction of training wall time spent redrawing the
            validation heatmaps (0: only at the end of fit; 1: whenever the CSV is written).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_classes: int = 50,
        top_pairs: int = 20,
        plot_time_share: float = PLOT_TIME_SHARE,
    ) -> None:
        super().__init__(plot_time_share)
        self.every_n_epochs = max(1, every_n_epochs)
        self.max_classes = max_classes
        self.top_pairs = top_pairs

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the validation matrix on schedule."""
        if epoch_due(trainer, self.every_n_epochs):
            self._write(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the test matrix."""
        self._write(trainer, pl_module, "test")

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # compute() gathers every rank's counts, so every rank must call it.
        model = classifier_module(pl_module)
        metrics = model.stage_metrics("val" if stage == "val" else "test")
        confmat = metrics.confmat.compute().cpu().long()
        if not trainer.is_global_zero:
            return
        names = model.class_names
        folder = run_dir(trainer)
        write_csv(
            folder / f"confusion_matrix_{stage}.csv",
            ["true \\ predicted", *names],
            [[name, *row] for name, row in zip(names, confmat.tolist(), strict=True)],
        )
        pairs = most_confused(confmat, names, self.top_pairs)
        header = ["true", "predicted", "count", "share_of_true"]
        write_csv(folder / f"most_confused_{stage}.csv", header, pairs)
        if stage == "val":
            header = ["true", "predicted as", "images", "share of true class"]
            heading = "Most confused (validation)"
            report_items.table(folder, "confusion", "confused/val", header, pairs[:10], heading)
        epoch = f", epoch {trainer.current_epoch + 1}" if stage == "val" else ""
        step = trainer.global_step
        self.draws.request(
            trainer, stage, lambda: self._plot(trainer, confmat, names, stage, folder, epoch, step)
        )

    def _plot(
        self,
        trainer: pl.Trainer,
        confmat: torch.Tensor,
        names: list[str],
        stage: str,
        folder: Path,
        epoch: str,
        step: int,
    ) -> None:
        support = confmat.sum(1, keepdim=True).clamp(min=1).double()
        shown, note = confmat, ""
        if len(names) > self.max_classes:
            keep = focus_classes(confmat, self.max_classes)
            shown, support = confmat[keep][:, keep], support[keep]
            names = [names[i] for i in keep]
            note = f" ({len(keep)} most confused of {confmat.shape[0]} classes)"
        # Normalised by each true class's full support, so hidden columns still count.
        normalized = shown.double() / support
        for suffix, matrix, is_norm in (("", shown, False), ("_normalized", normalized, True)):
            kind = " (row-normalised)" if is_norm else ""
            title = f"{stage} confusion matrix{kind}{epoch}{note}"
            path = folder / f"confusion_matrix_{stage}{suffix}.png"
            draw("heatmap", path, matrix.numpy(), names, title, is_norm)
            shown_in = "" if is_norm else "confusion"  # the report shows the counts
            alt = f"{'validation' if stage == 'val' else stage} confusion matrix"
            log_image(trainer, f"{stage}/confusion_matrix{suffix}", path, step, shown_in, alt)
