"""MixUp/CutMix: training mixes, evaluation stays valid, mixing stops at mixup_off_epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from classifier.files import run_dir
from tests.conftest import CONF, run_cli


def test_mixing_keeps_evaluation_valid_and_stops_on_schedule(image_folder: Path) -> None:
    cli: Any = run_cli(
        "fit",
        "--config",
        str(CONF / "full.yaml"),
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


def test_wandb_logger_works_offline_without_account(image_folder: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [
        "fit",
        "--config",
        str(CONF / "tiny.yaml"),
        "--data.data_dir",
        str(image_folder),
        "--trainer.max_epochs",
        "1",
        "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.save_dir=runs",
        "--trainer.callbacks+=classifier.TrainingHistory",
    ]
    # Two runs into one save_dir: each gets its own folder (WandB keeps no version folders).
    first: Any = run_cli(*args)
    import wandb

    wandb.finish()  # as when the first command's process ends (WandbLogger reuses a live run)
    second: Any = run_cli(*args)
    assert list(Path("runs").rglob("*.wandb"))
    folders = [run_dir(cli.trainer) for cli in (first, second)]
    assert folders[0] != folders[1]
    for folder in folders:
        assert folder.parent == Path("runs") / "lightning_logs"
        for name in ("config.yaml", "history.csv", "checkpoints/last.ckpt"):
            assert (folder / name).is_file(), folder / name
    assert second.trainer.callback_metrics["val/top1"] >= 0
