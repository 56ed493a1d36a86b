"""Batch-size and learning-rate finders before fit, recorded so the run reproduces without them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.conftest import run_cli, tiny


@pytest.mark.slow
def test_finders_choose_record_and_plot(image_folder: Path) -> None:
    cli: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.max_epochs", "1"),
        "--tune.batch_size",
        "true",
        "--tune.lr",
        "true",
    )
    run = Path(cli.trainer.log_dir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    # 36 training images: doubling from 2 stops at the dataset's size.
    assert config["data"]["batch_size"] == cli.datamodule.batch_size >= 16
    lr = config["model"]["lr"]
    assert lr == pytest.approx(cli.model.hparams["lr"]) and lr != 0.01  # tiny.yaml's value
    assert config["tune"] == {"batch_size": False, "lr": False}
    assert Image.open(run / "lr_finder.png").size[0] > 400
    assert not list(run.glob("lr_find*.ckpt")) and not list(Path().glob(".lr_find*"))
    # The recorded config reruns the same settings without searching.
    again: Any = run_cli("fit", "--config", str(run / "config.yaml"), "--trainer.max_epochs", "1")
    assert again.model.hparams["lr"] == pytest.approx(lr)
    assert again.datamodule.batch_size == config["data"]["batch_size"]
    assert not (Path(again.trainer.log_dir) / "lr_finder.png").exists()


@pytest.mark.slow
def test_finders_refuse_a_resumed_run(image_folder: Path) -> None:
    from classifier.tune import TuneError

    cli: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    last = str(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
    with pytest.raises(TuneError, match="drop --ckpt_path"):
        run_cli(*tiny("fit", image_folder), "--ckpt_path", last, "--tune.lr", "true")
