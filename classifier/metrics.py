"""Named classification metrics and the per-class report.

Names say which average they are, because torchmetrics' ``Accuracy`` (micro) and
``MulticlassAccuracy`` (macro) disagree by default: ``top1``/``top5`` are micro (fraction of
images), ``balanced_acc`` is macro recall (mean of per-class accuracies), ``f1_macro`` is the
unweighted mean of per-class F1.

The metrics of one evaluation stage (``val`` or ``test``), updated without host syncs.

``PerClassReport``: support, precision, recall, F1 and AUROC of every class, as CSV.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module
from classifier.file_io import run_dir, write_csv
from classifier.image_dataset import UNREADABLE

#: Confidence bins of the expected calibration error and the reliability diagram.
BINS = 15

#: The metrics of a test that ``report.html``'s summary shows.
SUMMARY = ("top1", "top5", "balanced_acc", "f1_macro", "auroc", "ece", "nll", "loss")
PER_CLASS_HEADER = (
    "class",
    "support",
    "predicted",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auroc",
)


def summary_metrics(num_classes: int, ignore_index: int | None = None) -> MetricCollection:
    """``top1``, ``top5`` (when there are more than 5 classes), ``balanced_acc``, ``f1_macro``.

    Samples labelled ``ignore_index`` (unreadable files) are not counted.
    """
    metrics: dict[str, MulticlassAccuracy | MulticlassF1Score] = {
        "top1": MulticlassAccuracy(
            num_classes, top_k=1, average="micro", ignore_index=ignore_index
        ),
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro", ignore_index=ignore_index),
        "f1_macro": MulticlassF1Score(num_classes, average="macro", ignore_index=ignore_index),
    }
    if num_classes > 5:
        metrics["top5"] = MulticlassAccuracy(
            num_classes, top_k=5, average="micro", ignore_index=ignore_index
        )
    return MetricCollection(metrics)  # type: ignore[arg-type]


def confusion_matrix(
    num_classes: int, ignore_index: int | None = None
) -> MulticlassConfusionMatrix:
    """Counts: rows are true classes, columns predicted classes (``ignore_index`` left out)."""
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)


def per_class(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Support, predicted count, precision, recall and F1 per class from a count matrix.

    Per-class accuracy is the fraction of that class's images classified correctly, which
    for single-label classification equals recall.
    """
    counts = confmat.double()
    correct = counts.diagonal()
    support = counts.sum(1)
    predicted = counts.sum(0)
    precision = correct / predicted.clamp(min=1)
    recall = correct / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        "support": support,
        "predicted": predicted,
        "accuracy": recall,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _rounded(value: float | str) -> float | str:
    return round(value, 6) if isinstance(value, float) else value


def write_per_class_csv(
    path: Path, confmat: torch.Tensor, class_names: list[str], auroc: torch.Tensor | None = None
) -> list[list[Any]]:
    """Write the per-class report as a CSV a person can open in a spreadsheet (``auroc``
    empty where it is undefined or not given); its rows."""
    stats = {k: v.tolist() for k, v in per_class(confmat.cpu()).items()}
    areas = [float("nan")] * len(class_names) if auroc is None else auroc.cpu().tolist()
    stats["auroc"] = ["" if a != a else a for a in areas]
    rows = [
        [
            name,
            int(stats["support"][i]),
            int(stats["predicted"][i]),
            *(
                round(v, 6) if isinstance(v := stats[k][i], float) else v
                for k in PER_CLASS_HEADER[3:]
            ),
        ]
        for i, name in enumerate(class_names)
    ]
    write_csv(path, PER_CLASS_HEADER, rows)
    return rows


class OneVsRestAUROC(Metric):
    """Macro and per-class one-vs-rest AUROC from the epoch's accumulated scores.

    Stores each image's logits and ranks its log-probabilities in float64 (probabilities
    underflow to ties, float32 rounds distinct images to ties); computes every class's AUROC
    at once from ranks (the Mann-Whitney statistic, tied scores counting one half), a sort per
    block of classes instead of a loop over classes. A class with no positive or no negative
    image gets NaN and is left out of the macro mean. Images labelled ``ignore_index`` are not
    counted.

    Args:
        num_classes: number of classes.
        ignore_index: label of images to leave out.
        block: classes ranked per sort (bounds the memory of :meth:`compute`).
    """

    full_state_update = False
    scores: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __init__(self, num_classes: int, ignore_index: int | None = None, block: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.block = block
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    @override
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of logits and labels."""
        self.scores.append(logits.detach().float())  # ignore_index is dropped at compute:
        # masking here would read the mask back to the host every batch
        self.labels.append(labels)

    @override
    def compute(self) -> torch.Tensor:
        """Per-class AUROC (``num_classes`` values, NaN where undefined)."""
        scores = dim_zero_cat(self.scores)
        labels = dim_zero_cat(self.labels).long()
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            scores, labels = scores[keep], labels[keep]
        count = len(labels)
        result = torch.full((self.num_classes,), float("nan"), device=scores.device)
        if count == 0:
            return result
        # Log-probabilities in float64: float32 would tie distinct images (and probabilities
        # underflow to ties at 0), and a tie counts one half.
        normaliser = scores.double().logsumexp(dim=1, keepdim=True)
        positives = torch.bincount(labels, minlength=self.num_classes).double()
        negatives = count - positives
        for start in range(0, self.num_classes, self.block):
            stop = min(start + self.block, self.num_classes)
            block = (scores[:, start:stop].double() - normaliser).T.contiguous()
            ordered = block.sort(dim=1).values
            # Tied scores share the mean of their ranks: (number below + 1 + number at or
            # below) / 2, found by binary search in each class's sorted scores.
            below = torch.searchsorted(ordered, block, right=False)
            at_or_below = torch.searchsorted(ordered, block, right=True)
            ranks = (below + 1 + at_or_below).double() / 2
            own = labels[None, :] == torch.arange(start, stop, device=labels.device)[:, None]
            rank_sum = (ranks * own).sum(1)
            pos, neg = positives[start:stop], negatives[start:stop]
            auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
            result[start:stop] = torch.where((pos > 0) & (neg > 0), auc, torch.nan).float()
        return result


def macro(per_class: torch.Tensor) -> torch.Tensor:
    """Mean over the classes where the value is defined (NaN if none is)."""
    return per_class.nanmean()


class CalibrationBins(Metric):
    """Images, summed confidence and correct predictions per confidence bin (top label), the
    statistics behind the ECE and the reliability diagram; summed across processes.

    Args:
        bins: equal-width confidence bins over [0, 1].
        ignore_index: label of images to leave out.
        kwargs: torchmetrics options (``sync_on_compute=False`` for one process's data).
    """

    full_state_update = False
    count: torch.Tensor
    confidence: torch.Tensor
    correct: torch.Tensor

    def __init__(self, bins: int = BINS, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bins = bins
        self.ignore_index = ignore_index
        for name in ("count", "confidence", "correct"):
            self.add_state(
                name, default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum"
            )

    @override
    def update(self, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of probabilities (rows sum to 1) and labels."""
        confidence, predicted = probabilities.float().nan_to_num(0.0).max(dim=1)
        keep = labels != self.ignore_index if self.ignore_index is not None else None
        weight = keep.double() if keep is not None else torch.ones_like(confidence).double()
        index = (confidence * self.bins).long().clamp(0, self.bins - 1)
        self.count.index_add_(0, index, weight)
        self.confidence.index_add_(0, index, confidence.double() * weight)
        self.correct.index_add_(0, index, (predicted == labels).double() * weight)

    @override
    def compute(self) -> torch.Tensor:
        """The expected calibration error: the count-weighted mean |accuracy - confidence|."""
        total = self.count.sum().clamp(min=1)
        return ((self.correct - self.confidence).abs().sum() / total).float()

    def table(self) -> dict[str, list[float]]:
        """Per bin: images, mean confidence and accuracy (NaN where a bin is empty)."""
        count = self.count.cpu()
        safe = count.clamp(min=1)
        empty = count == 0
        confidence = torch.where(empty, torch.nan, self.confidence.cpu() / safe)
        accuracy = torch.where(empty, torch.nan, self.correct.cpu() / safe)
        return {
            "count": count.tolist(),
            "confidence": confidence.tolist(),
            "accuracy": accuracy.tolist(),
        }


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


class PerClassReport(Callback):
    """Write ``val_per_class.csv`` after every validation and ``test_per_class.csv`` after
    test: support, predicted count, accuracy (= recall), precision, recall, F1 and one-vs-rest
    AUROC per class,
    from the counts the model accumulated (synchronised across processes).

    ``classifier`` adds this callback to ``fit``, ``validate`` and ``test`` when the config
    has none.
    """

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``val_per_class.csv`` (not for sanity-check batches)."""
        if not trainer.sanity_checking:
            self._write(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``test_per_class.csv``."""
        self._write(trainer, pl_module, "test")

    @staticmethod
    def _write(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = classifier_module(pl_module)
        metrics = module.stage_metrics(stage)
        confmat = metrics.confmat.compute()  # every rank takes part
        auroc = metrics.auroc.compute()
        if trainer.is_global_zero:
            path = run_dir(trainer) / f"{stage}_per_class.csv"
            rows = write_per_class_csv(path, confmat, list(module.class_names), auroc)
            shown = [i for i, h in enumerate(PER_CLASS_HEADER) if h != "accuracy"]
            f1 = PER_CLASS_HEADER.index("f1")
            rows.sort(key=lambda r: -math.inf if r[f1] == "" or r[f1] != r[f1] else r[f1])
            report_items.table(
                path.parent,
                "per-class",
                f"per-class/{stage}",
                [PER_CLASS_HEADER[i] for i in shown],
                ([r[i] for i in shown] for r in rows),
                f"{stage} (worst F1 first)",
            )

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the report the test's headline metrics (logged at the end of the epoch)."""
        logged = trainer.callback_metrics
        found = {n: float(logged[f"test/{n}"]) for n in SUMMARY if f"test/{n}" in logged}
        if trainer.is_global_zero and found:
            report_items.cards(run_dir(trainer), "summary", "summary/test", found, "Test")
