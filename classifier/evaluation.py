"""The metrics of one evaluation stage (``val`` or ``test``), updated without host syncs."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from classifier.datasets import UNREADABLE
from classifier.metrics import confusion_matrix, summary_metrics


class StageMetrics(nn.Module):
    """Mean loss, summary metrics (``top1``, ``top5``, ``balanced_acc``, ``f1_macro``), the
    confusion matrix and the count of unreadable files of one stage, synchronised across
    processes when computed. Files labelled :data:`~classifier.datasets.UNREADABLE` count in
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

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add a batch; return its per-image cross-entropy (0 for unreadable files)."""
        losses = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=UNREADABLE)
        readable = labels != UNREADABLE  # a mask, not an index: no host sync
        self.loss.update(losses, weight=readable.float())
        self.unreadable.update((~readable).sum())
        self.summary.update(logits, labels)
        self.confmat.update(logits.argmax(1), labels)
        return losses

    def compute_logged(self) -> dict[str, torch.Tensor]:
        """The summary metrics and ``loss``, by name (every process takes part)."""
        values: dict[str, torch.Tensor] = dict(self.summary.compute())
        values["loss"] = self.loss.compute()
        return values

    def reset(self) -> None:
        """Start the next epoch from nothing."""
        for metric in (self.summary, self.confmat, self.loss, self.unreadable):
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
