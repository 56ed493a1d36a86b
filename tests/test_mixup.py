"""MixUp/CutMix: training mixes, evaluation stays valid, mixing stops at mixup_off_epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FULL, run_cli


@pytest.mark.slow
def test_mixing_keeps_evaluation_valid_and_stops_on_schedule(image_folder: Path) -> None:
    cli: Any = run_cli(
        "fit",
        *FULL,
        "--data.data_dir",
        str(image_folder),
        "--model.mixup",
        "0.4",
        "--model.cutmix",
        "1.0",
        "--model.mixup_off_epoch",
        "1",
    )
    run = Path(cli.trainer.log_dir)
    history = list(csv.DictReader((run / "history.csv").open()))
    # Accuracy on mixed targets is meaningless, so train_top1 is only recorded once mixing stops.
    assert math.isnan(float(history[0]["train_top1"]))
    assert 0 <= float(history[1]["train_top1"]) <= 1
    matrix = list(csv.reader((run / "confusion_matrix_val.csv").open()))[1:]
    assert sum(int(v) for row in matrix for v in row[1:]) == 18
    assert (run / "val_predictions.png").is_file()
