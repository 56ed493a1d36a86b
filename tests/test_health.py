"""Data health: duplicates across splits, under two classes and within a class are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from classifier.health import groups_of
from classifier.perceptual_hash import near_pairs
from classifier.splits import DataError
from tests.conftest import make_folder, run_cli, tiny


def _brute_groups(hashes: np.ndarray, max_distance: int) -> list[list[int]]:
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    first, second = np.triu_indices(len(hashes), 1)
    close = distance[first, second] <= max_distance
    return groups_of(len(hashes), np.stack([first[close], second[close]], axis=1))


@pytest.mark.parametrize("max_distance", [0, 1, 4, 7])
def test_banded_search_finds_the_same_groups_as_all_pairs(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    hashes = rng.integers(0, 2**63, 2000, dtype=np.uint64) * 2 + 1
    for i in range(0, 400, 4):  # near copies 0-8 bits away, chains, and exact repeats
        flipped = int(hashes[i])
        for bit in rng.choice(64, size=int(rng.integers(0, 9)), replace=False):
            flipped ^= 1 << int(bit)
        hashes[i + 1] = np.uint64(flipped)
        hashes[i + 2] = hashes[i + 1] ^ np.uint64(1 << int(rng.integers(64)))
    hashes[900:905] = hashes[899]
    found = groups_of(len(hashes), near_pairs(hashes, max_distance))
    assert found == _brute_groups(hashes, max_distance)
    assert found  # the planted copies are there to be found


def test_a_hundred_thousand_hashes_are_compared_without_all_pairs() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 100_000, dtype=np.uint64) * 2
    hashes[1::1000] = hashes[::1000] ^ np.uint64(0b101)
    pairs = near_pairs(hashes, 4)  # make bench times this (well under 10 s on one core)
    assert {tuple(p) for p in pairs.tolist()} >= {(i, i + 1) for i in range(0, 100_000, 1000)}


def _photo(seed: int, size: int = 96) -> Image.Image:
    """A smooth picture, like a photo (the generated class images are mostly noise)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def _unhealthy(root: Path) -> Path:
    data = make_folder(root, counts={"train": 8, "val": 4})
    # An exact copy of a training image in val (leakage).
    shutil.copy(data / "train" / "cat" / "cat_000.png", data / "val" / "cat" / "leak.png")
    # A resized, re-encoded copy in val (a near duplicate: other bytes, other size).
    big = _photo(7)
    big.save(data / "train" / "dog" / "big.png")
    big.resize((80, 80), Image.Resampling.BICUBIC).save(
        data / "val" / "dog" / "near.jpg", quality=85
    )
    # The same picture filed under two classes of train (conflicting labels).
    shutil.copy(data / "train" / "fox" / "fox_002.png", data / "train" / "cat" / "fox_as_cat.png")
    # A copy within one class (redundant).
    shutil.copy(data / "train" / "fox" / "fox_003.png", data / "train" / "fox" / "again.png")
    return data


def _group_with(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in report["groups"] if any(name in i["path"] for i in g["images"]))


@pytest.mark.slow
def test_every_kind_of_duplicate_is_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _unhealthy(tmp_path / "data")
    with pytest.warns(UserWarning, match="leak"):
        cli: Any = run_cli(*tiny("fit", data, "--trainer.max_epochs", "1"))
    report = json.loads((Path(cli.trainer.log_dir) / "data_health.json").read_text())
    exact = _group_with(report, "leak.png")
    assert exact["kinds"] == ["leakage"] and exact["exact"]
    assert {i["split"] for i in exact["images"]} == {"train", "val"}
    near = _group_with(report, "near.jpg")
    assert near["kinds"] == ["leakage"] and not near["exact"]
    conflict = _group_with(report, "fox_as_cat.png")
    assert conflict["kinds"] == ["conflicting_labels"]
    assert {i["class"] for i in conflict["images"]} == {"cat", "fox"}
    assert _group_with(report, "again.png")["kinds"] == ["redundant"]
    assert report["summary"]["leakage"] == {"groups": 2, "images": 4}
    assert "Data health" in capsys.readouterr().out


def test_leakage_can_stop_the_run(tmp_path: Path) -> None:
    data = _unhealthy(tmp_path / "data")
    with pytest.raises(DataError, match=r"leak\.png"):
        run_cli(*tiny("fit", data, "--data.on_leakage", "error"))


def test_images_without_a_perceptual_hash_or_thumbnail_are_compared_byte_for_byte() -> None:
    from classifier.health import ImageRecord, health_report

    # Distinct small pictures (digits, icons) can share a perceptual hash; without their
    # thumbnails only exact copies of them count, so look-alikes are not one "duplicate" group.
    records = [ImageRecord("train", str(i % 3), f"{i}.png", f"c{i}", None) for i in range(30)]
    records.append(ImageRecord("val", "0", "copy.png", "c0", None))
    report = health_report(records, 4)
    assert [len(g["images"]) for g in report["groups"]] == [2]
    assert report["groups"][0]["kinds"] == ["leakage"]
    check = {"images": 0, "min_side": 64, "small_images": 0, "pending": 0}
    assert report["near_duplicate_check"] == check


def test_val_and_test_sharing_a_picture_is_not_called_training_leakage() -> None:
    from classifier.health import ImageRecord, health_report

    records = [
        ImageRecord("val", "a", "v.png", "same", 1),
        ImageRecord("test", "a", "t.png", "same", 1),
    ]
    assert health_report(records, 4)["groups"][0]["kinds"] == ["split_overlap"]


def test_a_warm_start_recalls_the_small_image_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comparing 10^5 thumbnails takes 11 s on two cores: a second run on the same images
    recalls the pairs from the scan cache; a changed image compares again."""
    from classifier import health_check
    from classifier.datamodule import ImageFolderDataModule
    from tests.conftest import make_folder

    data = make_folder(tmp_path / "data", counts={"train": 6, "val": 3})  # 32 px: small images
    with Image.open(data / "train" / "cat" / "cat_000.png") as image:  # found by thumbnail only
        image.resize((48, 48), Image.Resampling.BICUBIC).save(data / "val" / "cat" / "copy.png")
    calls: list[int] = []
    real = health_check.small_copies
    monkeypatch.setattr(health_check, "small_copies", lambda t: calls.append(len(t)) or real(t))

    def leaked() -> int:
        module = ImageFolderDataModule(str(data), image_size=32)
        module.setup("fit")
        report = module.folder.health.report
        assert report is not None
        return int(report["summary"]["leakage"]["images"])

    assert leaked() == 2 and len(calls) == 1
    assert leaked() == 2 and len(calls) == 1  # recalled, same result
    Image.new("RGB", (32, 32), (9, 99, 199)).save(data / "val" / "dog" / "new.png")
    assert leaked() == 2 and len(calls) == 2  # other thumbnails: compared again


def test_a_remembered_comparison_from_another_copy_of_the_files_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memo's key holds the files' cache keys (device, inode, times), as a cached row
    does: a database carried from elsewhere (here: poisoned to say "no pairs") cannot hide
    a copy in another folder that holds the same pictures."""
    import sqlite3

    from classifier.datamodule import ImageFolderDataModule
    from classifier.scan_cache import VERSION, cache_dir
    from tests.conftest import make_folder

    data = make_folder(tmp_path / "data", counts={"train": 6, "val": 3})
    with Image.open(data / "train" / "cat" / "cat_000.png") as image:
        image.resize((48, 48), Image.Resampling.BICUBIC).save(data / "val" / "cat" / "copy.png")

    def leaked(folder: Path) -> int:
        module = ImageFolderDataModule(str(folder), image_size=32)
        module.setup("fit")
        assert module.folder.health.report is not None
        return int(module.folder.health.report["summary"]["leakage"]["images"])

    assert leaked(data) == 2
    with sqlite3.connect(cache_dir() / f"scan-v{VERSION}.sqlite") as db:
        db.execute("UPDATE memo SET value = x''")
    db.close()
    other = shutil.copytree(data, tmp_path / "other")
    assert leaked(other) == 2
