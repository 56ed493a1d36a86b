"""Data health: duplicates across splits, under two classes and within a class are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from classifier.splits import DataError
from tests.conftest import make_folder, run_cli, tiny


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
    from classifier import health
    from classifier.datamodule import ImageFolderDataModule
    from tests.conftest import make_folder

    data = make_folder(tmp_path / "data", counts={"train": 6, "val": 3})  # 32 px: small images
    with Image.open(data / "train" / "cat" / "cat_000.png") as image:  # found by thumbnail only
        image.resize((48, 48), Image.Resampling.BICUBIC).save(data / "val" / "cat" / "copy.png")
    calls: list[int] = []
    real = health.small_copies
    monkeypatch.setattr(health, "small_copies", lambda t: calls.append(len(t)) or real(t))

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


def test_a_warm_start_recalls_the_near_copy_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The near-copy search over 10^6 hashes takes seconds: a second check of the same files
    with the same hashes recalls the pairs from the scan cache; a changed hash searches again
    (and what it finds is what the search finds)."""
    from classifier import health
    from classifier.health import Hashes
    from classifier.scan_cache import ScanCache
    from classifier.splits import read_split
    from tests.conftest import make_folder

    data = make_folder(tmp_path / "data", counts={"train": 4, "val": 2})
    names = ["cat", "dog", "fox"]
    calls: list[int] = []
    real = health.near_hash_pairs
    monkeypatch.setattr(health, "near_hash_pairs", lambda p, d: calls.append(len(p)) or real(p, d))

    def leaked(val_hash: int) -> int:
        check = health.HealthCheck(names, 4, "warn")
        check.memo = ScanCache.open()
        for name in ("train", "val"):
            split = read_split(name, data / name, names)
            count = len(split)
            phash = np.random.default_rng(count).integers(0, 2**62, count, dtype=np.int64)
            phash[0] = 0x5555_5555_5555_5555 if name == "train" else val_hash
            content = np.array([f"{name}{i}".encode() for i in range(count)], dtype="S16")
            check.add(split, Hashes(content, phash, np.full(count, b"", dtype=object)))
        check.check(None, announce=False)
        assert check.report is not None
        return int(check.report["summary"]["leakage"]["images"])

    near = 0x5555_5555_5555_5555 ^ 0b1001  # 2 bits from train's first image
    assert leaked(near) == 2 and len(calls) == 1
    assert leaked(near) == 2 and len(calls) == 1  # recalled, same result
    assert leaked(0x0F0F_0F0F_0F0F_0F0F) == 0 and len(calls) == 2  # another hash: searched


def test_the_health_unit_finishes_on_the_trainers_hooks(tmp_path: Path) -> None:
    """The check of a fit is its own unit: the data module hands its slots to the datasets,
    and the trainer's hooks finish it (second epoch's start, a start resumed past the first
    epoch, the end of a shorter fit that was not interrupted), once; then the workers stop
    hashing."""
    from types import SimpleNamespace

    from classifier.datamodule import ImageFolderDataModule

    def photos(root: Path) -> Path:  # 96 px: hashed by the loaders, not by the scan
        for s, (split, count) in enumerate((("train", 4), ("val", 2))):
            for c, label in enumerate(("cat", "dog")):
                (root / split / label).mkdir(parents=True)
                for i in range(count):
                    _photo(100 * s + 10 * c + i).save(root / split / label / f"{i}.png")
        return root

    data = photos(tmp_path / "data")

    def started() -> tuple[Any, Any]:
        module = ImageFolderDataModule(str(data), image_size=32, num_workers=0)
        trainer: Any = SimpleNamespace(
            callbacks=[], current_epoch=0, local_rank=0, is_global_zero=False, interrupted=False
        )
        module.setup("fit")  # reads and checks the splits (no trainer: nothing to add to)
        module.health.start(trainer)
        module.health.start(trainer)
        assert trainer.callbacks == [module.health]  # added once
        return module.health, trainer

    health, trainer = started()
    slot = health.sink("train")
    assert slot is not None and slot.wants(0) and health.sink("test") is None
    health.on_train_epoch_start(trainer, None)
    assert not health.check.complete  # the first epoch is still running
    trainer.current_epoch = 1
    health.on_train_epoch_start(trainer, None)
    assert health.check.complete and not any(slot.wants(i) for i in range(len(slot.values)))
    assert health.check.report["near_duplicate_check"]["pending"] == 0
    health, trainer = started()  # the scan cache knows every hash now: nothing to finish
    assert health.check.complete and health.sink("train") is None

    for hook in ("on_train_start", "teardown", "interrupted"):
        data = photos(tmp_path / hook)
        health, trainer = started()
        trainer.current_epoch = 1 if hook == "on_train_start" else 0
        trainer.interrupted = hook == "interrupted"
        if hook == "on_train_start":
            health.on_train_start(trainer, None)
        else:
            health.teardown(trainer, None, "fit")
        assert health.check.complete == (hook != "interrupted"), hook
