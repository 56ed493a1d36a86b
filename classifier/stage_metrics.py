"""The metrics of one evaluation stage (``val`` or ``test``), updated without host syncs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from classifier.image_dataset import UNREADABLE
from classifier.metrics import (
    BINS,
    CalibrationBins,
    OneVsRestAUROC,
    confusion_matrix,
    macro,
    summary_metrics,
)


class StageMetrics(nn.Module):
    """Mean loss, summary metrics (``top1``, ``top5``, ``balanced_acc``, ``f1_macro``, and
    ``auroc``: the macro one-vs-rest AUROC of the epoch's accumulated scores), ``nll`` and
    ``ece`` (15-bin expected calibration error) of the calibrated probabilities, the
    confusion matrix and the count of unreadable files of one stage, synchronised across
    processes when computed. Files labelled :data:`~classifier.image_dataset.UNREADABLE` count in
    :attr:`unreadable` and nowhere else.

    Args:
        num_classes: number of classes.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.summary = summary_metrics(num_classes, UNREADABLE)
        self.confmat = confusion_matrix(num_classes, UNREADABLE)
        self.loss = MeanMetric()
        self.unreadable = SumMetric()
        self.auroc = OneVsRestAUROC(num_classes, UNREADABLE)
        self.nll = MeanMetric()
        self.calibration = CalibrationBins(BINS, UNREADABLE)

    def update(
        self, logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None
    ) -> torch.Tensor:
        """Add a batch; return its per-image cross-entropy (0 for unreadable files).

        ``nll`` and ``ece`` are those of ``softmax(logits / temperature)`` (the model's
        calibration); ``loss`` and the other metrics use the logits as they are.
        """
        losses = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=UNREADABLE)
        readable = labels != UNREADABLE  # a mask, not an index: no host sync
        self.loss.update(losses, weight=readable.float())
        scaled = logits.float() if temperature is None else logits.float() / temperature
        nll = F.cross_entropy(scaled, labels, reduction="none", ignore_index=UNREADABLE)
        self.nll.update(nll, weight=readable.float())
        self.calibration.update(scaled.softmax(dim=1), labels)
        self.unreadable.update((~readable).sum())
        self.summary.update(logits, labels)
        self.confmat.update(logits.argmax(1), labels)
        self.auroc.update(logits, labels)
        return losses

    def compute_logged(self) -> dict[str, torch.Tensor]:
        """The summary metrics and ``loss``, by name (every process takes part)."""
        values: dict[str, torch.Tensor] = dict(self.summary.compute())
        values["loss"] = self.loss.compute()
        values["auroc"] = macro(self.auroc.compute())
        values["nll"] = self.nll.compute()
        values["ece"] = self.calibration.compute()
        return values

    def reset(self) -> None:
        """Start the next epoch from nothing."""
        metrics = (self.summary, self.confmat, self.loss, self.unreadable, self.auroc, self.nll)
        for metric in (*metrics, self.calibration):
            metric.reset()


def warn_unreadable(stage: str, count: int) -> None:
    """Say how many files of ``stage`` could not be read this epoch, and what happened to them."""
    if count:
        what = (
            "were replaced by the next readable image"
            if stage == "train"
            else "were left out of the metrics"
        )
        rank_zero_warn(
            f"{count} {stage} image(s) could not be read this epoch and {what}; their paths "
            "are in the warnings above (the files changed after the pre-scan?)."
        )


class TrainUnreadable:
    """The training images that failed to load, logged as ``train/unreadable`` at each epoch's
    end and summed over processes by Lightning with the epoch's other metrics (a collective of
    its own could meet the progress bar's metric sync on rank 0 alone and hang DDP); warned
    about once that sum is known, at the next epoch's start or the end of training."""

    def __init__(self) -> None:
        self.pending = False

    def log(self, module: pl.LightningModule, count: int) -> None:
        """Log this process's ``count`` for the epoch that ends."""
        module.log("train/unreadable", float(count), reduce_fx="sum", sync_dist=True)
        self.pending = True

    def warn(self, metrics: Mapping[str, Any]) -> None:
        """Warn about the summed count of the last logged epoch (once)."""
        if self.pending:
            self.pending = False
            count = metrics.get("train/unreadable")
            warn_unreadable("train", int(count) if count is not None else 0)


def hardness(losses: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How hard each image was: misclassified ones first (loss + 1e6), then by loss; unreadable
    files (label < 0) ``-inf``, never shown. The galleries of the hardest images rank by it."""
    wrong = (predicted != labels).float()
    return torch.where(labels >= 0, losses.float() + wrong * 1e6, -torch.inf)
