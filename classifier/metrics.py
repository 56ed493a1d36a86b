"""Named classification metrics and the per-class report.

Names say which average they are, because torchmetrics' ``Accuracy`` (micro) and
``MulticlassAccuracy`` (macro) disagree by default: ``top1``/``top5`` are micro (fraction of
images), ``balanced_acc`` is macro recall (mean of per-class accuracies), ``f1_macro`` is the
unweighted mean of per-class F1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from classifier.files import write_csv

PER_CLASS_HEADER = ("class", "support", "predicted", "accuracy", "precision", "recall", "f1")


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


def write_per_class_csv(path: Path, confmat: torch.Tensor, class_names: list[str]) -> None:
    """Write the per-class report as a CSV a person can open in a spreadsheet."""
    stats = {k: v.tolist() for k, v in per_class(confmat.cpu()).items()}
    rows = [
        [
            name,
            int(stats["support"][i]),
            int(stats["predicted"][i]),
            *(round(stats[k][i], 6) for k in PER_CLASS_HEADER[3:]),
        ]
        for i, name in enumerate(class_names)
    ]
    write_csv(path, PER_CLASS_HEADER, rows)
