"""Named metrics and the per-class report, on known inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from classifier.evaluation import StageMetrics
from classifier.metrics import per_class, summary_metrics, write_per_class_csv

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
    from classifier.datasets import UNREADABLE

    stage = StageMetrics(3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [9.0, 0, 0]])
    stage.update(logits, torch.tensor([0, 2, UNREADABLE]))
    values = stage.compute_logged()
    assert float(values["top1"]) == pytest.approx(0.5)
    assert int(stage.unreadable.compute()) == 1
    assert int(stage.confmat.compute().sum()) == 2
