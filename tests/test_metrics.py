"""Named metrics and the per-class report, on known inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from classifier.metrics import StageMetrics, per_class, summary_metrics, write_per_class_csv

#: Rows are true classes, columns predictions.
CONFMAT = torch.tensor([[5, 1, 0], [2, 6, 2], [0, 0, 0]])


def test_per_class_precision_recall_f1_of_a_known_matrix() -> None:
    stats = per_class(CONFMAT)
    assert stats["support"].tolist() == [6, 10, 0]
    assert stats["predicted"].tolist() == [7, 7, 2]
    assert stats["precision"].tolist() == pytest.approx([5 / 7, 6 / 7, 0])
    assert stats["recall"].tolist() == pytest.approx([5 / 6, 6 / 10, 0])
    assert stats["accuracy"].tolist() == stats["recall"].tolist()
    f1 = [2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 2 * (6 / 7) * 0.6 / (6 / 7 + 0.6), 0]
    assert stats["f1"].tolist() == pytest.approx(f1)


def test_per_class_csv_has_one_row_per_class(tmp_path: Path) -> None:
    path = tmp_path / "per_class.csv"
    write_per_class_csv(path, CONFMAT, ["cat", "dog", "owl"])
    rows = list(csv.DictReader(path.open()))
    assert [r["class"] for r in rows] == ["cat", "dog", "owl"]
    assert rows[1]["support"] == "10" and rows[2]["predicted"] == "2"
    assert float(rows[0]["precision"]) == pytest.approx(5 / 7, abs=1e-6)


def test_top5_appears_with_more_than_five_classes_and_counts_ranks() -> None:
    assert "top5" not in summary_metrics(5)
    metrics = summary_metrics(7)
    logits = torch.arange(7.0).repeat(4, 1)  # every image ranks classes 6, 5, 4, 3, 2, 1, 0
    labels = torch.tensor([6, 2, 1, 0])  # ranks 1, 5, 6 and 7
    values = metrics(logits, labels)
    assert float(values["top1"]) == pytest.approx(1 / 4)
    assert float(values["top5"]) == pytest.approx(2 / 4)


def test_top1_is_micro_and_balanced_accuracy_is_macro() -> None:
    metrics = summary_metrics(3)
    labels = torch.tensor([0] * 8 + [1, 2])
    logits = torch.nn.functional.one_hot(torch.zeros(10, dtype=torch.long), 3).float()
    values = metrics(logits, labels)  # always "class 0": right on 8 of 10 images
    assert float(values["top1"]) == pytest.approx(0.8)
    assert float(values["balanced_acc"]) == pytest.approx(1 / 3)
    assert float(values["f1_macro"]) == pytest.approx((2 * 0.8 * 1 / 1.8) / 3)


def test_unreadable_files_count_apart_from_every_metric() -> None:
    from classifier.image_dataset import UNREADABLE

    stage = StageMetrics(3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [9.0, 0, 0]])
    stage.update(logits, torch.tensor([0, 2, UNREADABLE]))
    values = stage.compute_logged()
    assert float(values["top1"]) == pytest.approx(0.5)
    assert int(stage.unreadable.compute()) == 1
    assert int(stage.confmat.compute().sum()) == 2


def test_auroc_matches_torchmetrics_for_a_thousand_classes() -> None:
    """The metric path at ImageNet scale: every class at once from ranks, equal to
    torchmetrics' per-class loop (make bench times both)."""
    from torchmetrics.classification import MulticlassAUROC

    from classifier.metrics import OneVsRestAUROC, macro

    classes, images = 1000, 3000
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (images,), generator=generator)
    logits = torch.randn(images, classes, generator=generator)
    logits += 2 * torch.nn.functional.one_hot(labels, classes)
    ours = OneVsRestAUROC(classes, block=300)
    for start in range(0, images, 256):  # accumulated over batches, computed once per epoch
        ours.update(logits[start : start + 256], labels[start : start + 256])
    per_class = ours.compute()
    reference = MulticlassAUROC(classes, average=None, thresholds=None)
    with pytest.warns(UserWarning):  # torchmetrics: classes without positives
        expected = reference(logits.double().softmax(1), labels).float()  # no float32 ties
    defined = ~per_class.isnan()
    assert int(defined.sum()) == int((torch.bincount(labels, minlength=classes) > 0).sum())
    assert torch.allclose(per_class[defined], expected[defined], atol=1e-5)
    assert float(macro(per_class)) == pytest.approx(float(expected[defined].mean()), abs=1e-5)


def test_auroc_leaves_out_unreadable_files_and_reaches_the_report(tmp_path: Path) -> None:
    from classifier.image_dataset import UNREADABLE

    stage = StageMetrics(3)
    # Images 1 and 2 are the same picture filed as 1 and as 0: their scores tie, half a pair.
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, -2.0, 4.0], [9.0, 0, 0]])
    stage.update(logits, torch.tensor([0, 1, 0, 2, UNREADABLE]))
    per_class = stage.auroc.compute()
    assert per_class.tolist() == pytest.approx([3.5 / 4, 2.5 / 3, 1.0])
    assert float(stage.compute_logged()["auroc"]) == pytest.approx((3.5 / 4 + 2.5 / 3 + 1) / 3)
    write_per_class_csv(tmp_path / "p.csv", stage.confmat.compute(), ["a", "b", "c"], per_class)
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [float(r["auroc"]) for r in rows] == pytest.approx([3.5 / 4, 2.5 / 3, 1.0])
