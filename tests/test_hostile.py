"""Hostile folders: bad files are found before training, named, and never stop a run."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from classifier.datamodule import ImageFolderDataModule
from classifier.image_dataset import ImageDataset, load_rgb
from classifier.splits import DataError
from tests.conftest import CONF, run_cli
from tests.hostile import BAD, ODD, add_symlink_cycle, make_hostile


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # A low pixel limit turns the 200x200 bomb.png into a decompression bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)
    return make_hostile(tmp_path / "hostile")


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.lstat().st_mtime_ns) for p in root.rglob("*"))


def test_prescan_excludes_and_names_bad_files(hostile: Path) -> None:
    before = _listing(hostile)
    dm = ImageFolderDataModule(str(hostile), image_size=32, num_workers=0)
    with pytest.warns(UserWarning, match=r"excluded 5 unreadable image") as caught:
        dm.setup("fit")
    message = next(str(w.message) for w in caught if "excluded" in str(w.message))
    assert all(name in message for name in BAD)
    reasons = {Path(p).name: r for p, r in dm.excluded["train"].items()}
    assert set(reasons) == set(BAD)
    assert "decompression bomb" in reasons["bomb.png"]
    assert "empty" in reasons["empty.jpg"]
    assert "not an allowed image format" in reasons["icon.png"]
    names = {p.name for p in dm.splits["train"].paths}
    assert set(ODD) <= names
    assert not names & {".DS_Store", "Thumbs.db", "desktop.ini", "README.md", "x.png"}
    assert dm.class_names == ["cat", "dog"]  # hidden folders are never classes
    assert _listing(hostile) == before  # nothing written into the data folder


def test_strict_makes_bad_files_an_error(hostile: Path) -> None:
    dm = ImageFolderDataModule(str(hostile), image_size=32, num_workers=0, strict=True)
    with pytest.raises(DataError, match=r"(?s)5 unreadable image.*truncated.jpg"):
        dm.setup("fit")


def test_second_scan_uses_the_cache(hostile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning):
        ImageFolderDataModule(str(hostile), num_workers=0).setup("fit")
    calls: list[Path] = []
    import classifier.prescan as scan

    original = scan.check_file
    monkeypatch.setattr(scan, "check_file", lambda p: calls.append(p) or original(p))
    with pytest.warns(UserWarning):
        ImageFolderDataModule(str(hostile), num_workers=0).setup("fit")
    assert calls == []


@pytest.mark.parametrize("name", ODD)
def test_odd_images_load_as_rgb(hostile: Path, name: str) -> None:
    path = next(hostile.rglob(name))
    image = load_rgb(path)
    assert image.dtype == torch.uint8 and image.shape[0] == 3


def test_odd_images_load_correctly(hostile: Path) -> None:
    cat, dog = hostile / "train" / "cat", hostile / "train" / "dog"
    assert load_rgb(cat / "rgba.png")[:, 0, 0].tolist() == [255, 255, 255]  # white background
    assert load_rgb(cat / "sixteen_bit.png")[:, 0, 0].tolist() == [155, 155, 155]  # not white
    assert load_rgb(dog / "rotated.jpg").shape[1:] == (60, 20)  # EXIF orientation applied
    cmyk = load_rgb(cat / "cmyk.jpg")[:, 0, 0]
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # CMYK (0,200,200,0) is red


def test_symlink_cycle_is_an_error(hostile: Path) -> None:
    add_symlink_cycle(hostile)
    with pytest.raises(DataError, match="symlink cycle"):
        ImageFolderDataModule(str(hostile), num_workers=0).setup("fit")


def test_case_clash_is_an_error(tmp_path: Path) -> None:
    for name in ("Cat", "cat", "dog"):
        (tmp_path / "d" / "train" / name).mkdir(parents=True)
    with pytest.raises(DataError, match="differ only by case"):
        _ = ImageFolderDataModule(str(tmp_path / "d")).class_names


def test_file_failing_at_load_time_is_replaced(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good)
    dataset = ImageDataset([tmp_path / "gone.png", good], [0, 1], substitute=True)
    _, label, index = dataset[0]
    assert (label, index) == (1, 1) and dataset.failures == 1


@pytest.mark.slow
def test_fit_on_hostile_folder_reports_and_trains(hostile: Path) -> None:
    with pytest.warns(UserWarning, match="excluded 5"):
        cli: Any = run_cli(
            "fit",
            "--config",
            str(CONF / "tiny.yaml"),
            "--data.data_dir",
            str(hostile),
            "--trainer.max_epochs",
            "1",
        )
    report = Path(cli.trainer.log_dir) / "excluded_files.csv"
    rows = list(csv.DictReader(report.open()))
    assert {Path(r["path"]).name for r in rows} == set(BAD)
    assert os.path.isfile(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
