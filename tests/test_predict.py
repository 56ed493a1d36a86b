"""predictions.csv rows: top-k in order, the true class kept, unreadable files marked."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier.image_dataset import UNREADABLE
from classifier.prediction_writer import PredictionWriter

NAMES = ["cat", "dog", "fox", "owl"]


def test_a_row_lists_the_top_k_classes_in_order() -> None:
    row = PredictionWriter._row(Path("a.png"), 0, 1, [0.1, 0.2, 0.6, 0.1], NAMES, 3, True, False)
    assert row[:5] == ["a.png", "fox", pytest.approx(0.6), "false", "dog"]
    assert row[5:11] == ["fox", pytest.approx(0.6), "dog", pytest.approx(0.2), "cat", 0.1]
    assert row[-1] == ""
    from classifier.predictions_format import columns

    assert len(columns(3, True)) == len(row)
    assert columns(3, True)[:5] == ["path", "predicted", "confidence", "accepted", "true"]


def test_an_unreadable_file_keeps_its_row_and_true_class() -> None:
    row = PredictionWriter._row(Path("b.png"), UNREADABLE, 3, [0.25] * 4, NAMES, 2, True)
    assert row == ["b.png", "", "", "", "owl", "", "", "", "", "unreadable"]


def test_no_true_column_without_class_folders() -> None:
    row = PredictionWriter._row(Path("c.png"), -1, -1, [0.7, 0.1, 0.1, 0.1], NAMES, 1, False)
    assert row == ["c.png", "cat", pytest.approx(0.7), "", "cat", pytest.approx(0.7), ""]


@pytest.mark.slow
def test_flipping_tta_on_a_model_never_trained_on_mirror_images_warns(
    image_folder: Path, recwarn: pytest.WarningsRecorder
) -> None:
    from typing import Any

    from tests.conftest import run_cli, tiny

    fit: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1", "--data.hflip", "0"))
    best = fit.trainer.checkpoint_callback.best_model_path
    predict = ["predict", "--ckpt_path", best, "--data.predict_dir", str(image_folder / "test")]
    run_cli(*predict, "--model.tta", "crops")
    assert not [w for w in recwarn if "tta flips images" in str(w.message)]
    run_cli(*predict, "--model.tta", "flip")
    assert [w for w in recwarn if "tta flips images" in str(w.message)]
