"""Batch-size and learning-rate finders before fit, recorded so the run reproduces without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from classifier.splits import DataError
from tests.conftest import make_folder, run_cli, tiny
from tests.test_health import _photo


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


@pytest.mark.slow
def test_the_data_health_check_is_the_runs_not_the_finders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A near copy in val (resized, re-encoded: found once the loaders hashed it) stops the
    run with ``on_leakage: error`` as without the finders: the check starts and finishes in the
    real fit, whose folder gets the same data_health.json and the terminal the same lines (the
    finder's fit used to run it, in its scratch folder, deleted since)."""
    data = make_folder(tmp_path / "data", counts={"train": 8, "val": 4})
    big = _photo(7)
    big.save(data / "train" / "dog" / "big.png")
    big.resize((80, 80), Image.Resampling.BICUBIC).save(
        data / "val" / "dog" / "near.jpg", quality=85
    )
    args = tiny("fit", data, "--trainer.max_epochs", "2", "--data.on_leakage", "error")
    seen = {}
    for version, tune in (("version_0", []), ("version_1", ["--tune.lr", "true"])):
        monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / f"cache_{version}"))  # fresh
        with pytest.raises(DataError, match=r"near\.jpg"):
            run_cli(*args, *tune)
        run = tmp_path / "runs" / "tiny" / version
        shown = capsys.readouterr()
        lines = (shown.out + shown.err).replace(version, "<run>").splitlines()
        seen[version] = (
            json.loads((run / "data_health.json").read_text()),
            [line for line in lines if "data_health" in line or "Data health" in line],
        )
    assert (tmp_path / "runs" / "tiny" / "version_1" / "lr_finder.png").is_file()  # tuned
    assert seen["version_0"][0]["summary"]["leakage"] == {"groups": 1, "images": 2}
    assert seen["version_1"] == seen["version_0"]
    assert any("every group: " in line for line in seen["version_1"][1])
