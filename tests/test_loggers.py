"""Loggers: each run keeps its own folder and files, whichever logger writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from classifier.file_io import run_dir
from tests.conftest import CONF, run_cli


@pytest.mark.slow
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
