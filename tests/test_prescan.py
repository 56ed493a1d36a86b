"""The pre-scan and its cache: cheap structural checks that still name every bad file, a
private SQLite cache that survives damage and Ctrl-C, and near copies found by the first epoch."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import stat
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.prescan import check_file, scan_split
from classifier.scan_cache import NO_HASH, UNHASHED, VERSION, ScanCache, cache_dir
from classifier.splits import read_split
from tests.conftest import make_folder, run_cli, tiny
from tests.test_attacks import run_entry


def _jpeg(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _photo(seed: int, size: tuple[int, int] = (256, 192)) -> Image.Image:
    from benchmarks.make_data import photo

    return photo(seed, *size)


def test_the_structural_check_names_every_kind_of_bad_file(tmp_path: Path) -> None:
    good = _jpeg(_photo(0), quality=90)
    png = io.BytesIO()
    _photo(1).save(png, "PNG")
    files = {
        "ok.jpg": good,
        "trailer.jpg": good + b"SAMSUNG-TRAILER" * 100,  # bytes after the end marker: fine
        "truncated.jpg": good[: len(good) // 2],
        "no_scan.jpg": good[:200],
        "empty.jpg": b"",
        "text.jpg": b"hello, not an image",
        "ok.png": png.getvalue(),
        "truncated.png": png.getvalue()[:-30],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    verdicts = {name: check_file(str(tmp_path / name))[0] for name in files}
    assert verdicts["ok.jpg"] is None and verdicts["trailer.jpg"] is None
    assert verdicts["ok.png"] is None
    assert "end-of-image" in str(verdicts["truncated.jpg"])
    assert (
        verdicts["no_scan.jpg"] and verdicts["text.jpg"] and verdicts["empty.jpg"] == "empty file"
    )
    assert "IEND" in str(verdicts["truncated.png"])
    assert (
        check_file(str(tmp_path / "ok.jpg"))[1]
        == check_file(str(tmp_path / "trailer.jpg"))[1][:0]
        + check_file(str(tmp_path / "ok.jpg"))[1]
    )


def test_a_decompression_bomb_header_is_refused_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bomb.jpg").write_bytes(_jpeg(_photo(0)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert "decompression bomb" in str(check_file(str(tmp_path / "bomb.jpg"))[0])


def _split(folder: Path) -> Any:
    return read_split("train", folder, sorted(p.name for p in folder.iterdir()))


def _scan(folder: Path) -> Any:
    cache = ScanCache.open()
    try:
        return scan_split(_split(folder), cache)
    finally:
        cache.close()


def test_the_cache_sees_a_same_size_replacement_and_survives_damage(image_folder: Path) -> None:
    train = image_folder / "train"
    assert _scan(train).bad == {}
    assert _scan(train).cached == len(_split(train))
    victim = _split(train).paths[0]
    before = victim.stat()
    victim.write_bytes(b"\0" * before.st_size)  # same size, then the old times put back
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert list(_scan(train).bad) == [0]
    database = cache_dir() / f"scan-v{VERSION}.sqlite"
    for name in (f"scan-v{VERSION}.sqlite-wal", f"scan-v{VERSION}.sqlite-shm"):
        (cache_dir() / name).unlink(missing_ok=True)
    database.write_bytes(b"not a database at all" * 100)
    with pytest.warns(UserWarning, match="could not be used.*building a new one"):
        assert list(_scan(train).bad) == [0]


def test_a_stopped_scan_keeps_what_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from classifier import prescan

    folder = make_folder(tmp_path / "d", counts={"train": 40}, classes=("cat",)) / "train"
    seen: list[object] = []

    def check(path: object) -> prescan.Checked:
        if len(seen) == 25:
            raise KeyboardInterrupt
        seen.append(path)
        return prescan.Checked(None, b"x" * 16)

    monkeypatch.setattr(prescan, "check_file", check)
    monkeypatch.setattr(prescan, "_threads", lambda: 1)
    with pytest.raises(KeyboardInterrupt):
        _scan(folder)
    rows = sqlite3.connect(cache_dir() / f"scan-v{VERSION}.sqlite").execute(
        "SELECT count(*) FROM files"
    )
    assert 0 < rows.fetchone()[0] <= 25


# Issue #19, rows 6 and 7: the cache is private or unused, and no folder's mode changes.


def test_a_cache_folder_others_can_write_is_not_used_nor_changed(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(shared))
    with pytest.warns(UserWarning, match="writable by other users"):
        cache = ScanCache.open()
    assert not cache.persistent and list(shared.iterdir()) == []
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # never changed


def test_a_poisoned_cache_cannot_hide_a_leak(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Another user who can write the cache folder (0777) plants rows that would call a copy
    of a training image in val something else: the cache is refused, the copy found."""
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(folder))
    shutil.copy(
        image_folder / "train" / "cat" / "cat_000.png", image_folder / "val" / "cat" / "x.png"
    )
    database = folder / f"scan-v{VERSION}.sqlite"
    ScanCache(None)  # schema only
    db = sqlite3.connect(database)
    db.execute(
        "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER, mtime INTEGER, ctime INTEGER,"
        " dev INTEGER, ino INTEGER, reason TEXT, content BLOB, phash INTEGER NOT NULL)"
        " WITHOUT ROWID"
    )
    copy = image_folder / "val" / "cat" / "x.png"
    info = copy.stat()
    key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_dev, info.st_ino)
    db.execute(
        "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?)",
        (os.fsencode(str(copy)), *key, None, b"P" * 16, NO_HASH),
    )
    db.commit()
    db.close()
    with pytest.warns(UserWarning, match="cache unused.*writable by other users"):
        code, err = run_entry(capsys, *tiny("fit", image_folder, "--data.on_leakage", "error"))
    assert code == 1 and "Traceback" not in err
    assert "error: 1 image group(s) appear in train and in val" in err


@pytest.mark.skipif(os.getuid() != 0, reason="changing a folder's owner needs root")
def test_a_cache_folder_of_another_user_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(folder))
    with pytest.warns(UserWarning, match="another user"):
        assert not ScanCache.open().persistent


def test_a_new_cache_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "new" / "cache"))
    cache = ScanCache.open()
    assert cache.persistent
    assert stat.S_IMODE((tmp_path / "new" / "cache").stat().st_mode) == 0o700
    assert (
        stat.S_IMODE((tmp_path / "new" / "cache" / f"scan-v{VERSION}.sqlite").stat().st_mode)
        == 0o600
    )


@pytest.mark.parametrize("version", [5, 8])
def test_an_older_sqlite_cache_goes_unread(image_folder: Path, version: int) -> None:
    """Its database and WAL files are removed without being opened (reading a database runs
    what its schema says); its files are checked again."""
    split = _split(image_folder / "train")
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True)
    old = folder / f"scan-v{version}.sqlite"
    with closing(sqlite3.connect(old)) as db:
        db.execute("CREATE TABLE files (path BLOB PRIMARY KEY, reason TEXT)")
        db.execute("INSERT INTO files VALUES (?, ?)", (split.paths.raw(0), "an old verdict"))
        db.commit()
    (folder / f"scan-v{version}.sqlite-wal").write_bytes(b"")
    result = scan_split(split, ScanCache.open())
    assert not list(folder.glob(f"scan-v{version}*"))
    assert result.bad == {} and result.cached == 0


# Near copies: exact ones before training, near ones by the end of the first epoch.


def _photos(root: Path, copies: dict[str, str]) -> Path:
    for split, count in (("train", 6), ("val", 3)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed = hash((split, label, i)) % 10**6
                (folder / f"{i}.jpg").write_bytes(_jpeg(_photo(seed), quality=90))
    for source, target in copies.items():
        image = Image.open(root / source).convert("RGB")
        small = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
        (root / target).write_bytes(_jpeg(small, quality=70))
    return root


@pytest.mark.slow
def test_a_resized_copy_in_val_is_found_after_the_first_epoch(tmp_path: Path) -> None:
    import json

    data = _photos(tmp_path / "data", {"train/a/0.jpg": "val/b/copy.jpg"})
    cli: Any = run_cli(*tiny("fit", data, "--trainer.max_epochs", "1"))
    report = json.loads((Path(cli.trainer.log_dir) / "data_health.json").read_text())
    assert report["near_duplicate_check"]["pending"] == 0
    leaks = [g for g in report["groups"] if "leakage" in g["kinds"]]
    assert len(leaks) == 1 and not leaks[0]["exact"]
    assert {Path(i["path"]).name for i in leaks[0]["images"]} == {"0.jpg", "copy.jpg"}
    # A warm start knows every hash at once: the leak is reported before training.
    again: Any = (
        run_cli(
            *tiny("fit", data, "--trainer.max_epochs", "1", "--data.on_leakage", "error"),
            "--trainer.limit_train_batches",
            "0",
        )
        if False
        else None
    )
    del again


@pytest.mark.slow
def test_a_warm_start_stops_a_near_copy_leak_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _photos(tmp_path / "data", {"train/a/0.jpg": "val/b/copy.jpg"})
    run_cli(*tiny("fit", data, "--trainer.max_epochs", "1"))  # hashes the images into the cache
    code, err = run_entry(capsys, *tiny("fit", data, "--data.on_leakage", "error"))
    assert code == 1 and "Traceback" not in err
    assert "error: 1 image group(s) appear in train and in val" in err


def test_the_workers_hash_what_they_decode(tmp_path: Path) -> None:
    from classifier.health import HashSlots
    from classifier.image_dataset import ImageDataset, load_rgb
    from classifier.perceptual_hash import phash_of

    data = _photos(tmp_path / "data", {})
    split = _split(data / "train")
    slot = HashSlots(np.full(len(split), UNHASHED, dtype=np.int64))  # in shared memory
    dataset = ImageDataset(split.paths, split.labels, None, hashes=slot)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    for _ in loader:
        pass
    expected = [phash_of(load_rgb(p)) for p in split.paths]
    assert slot.values.tolist() == expected and UNHASHED not in expected
    assert NO_HASH not in expected  # 256 px photos all have a perceptual hash


def test_the_scan_on_processes_finds_what_the_scan_in_process_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from classifier import prescan

    folder = make_folder(tmp_path / "d", counts={"train": 40}, classes=("cat", "dog"))
    train = folder / "train"
    (train / "cat" / "empty.png").write_bytes(b"")
    (train / "dog" / "text.jpg").write_text("not an image")
    whole = (train / "cat" / "cat_000.png").read_bytes()
    (train / "dog" / "cut.png").write_bytes(whole[: len(whole) // 2])
    results = []
    for threshold in (10**9, 10):  # in this process, then on forked processes
        monkeypatch.setattr(prescan, "PROCESSES_FROM", threshold)
        monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / f"cache-{threshold}"))
        results.append(_scan(train))
    here, there = results
    assert len(here.bad) == 3 and here.bad == there.bad
    assert list(here.content) == list(there.content)
    assert list(here.phash) == list(there.phash) and list(here.thumbs) == list(there.thumbs)


def test_the_scan_shows_files_per_second_on_a_terminal_and_nothing_in_a_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from classifier.prescan import _shown

    assert list(_shown(range(600), 600, "Scanning train/", True)) == list(range(600))
    assert capsys.readouterr().out == ""  # not even a blank line
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: as on a terminal
    slow = (time.sleep(0.001) or i for i in range(600))  # long enough for a refresh
    assert list(_shown(slow, 600, "Scanning train/", True)) == list(range(600))
    assert "files/s" in capsys.readouterr().out


def test_a_cache_of_another_shape_or_a_folder_in_its_place_is_no_crash(
    image_folder: Path,
) -> None:
    split = _split(image_folder / "train")
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True)
    (folder / "scan-v7.sqlite").mkdir()  # named like an old database: left alone
    with sqlite3.connect(folder / f"scan-v{VERSION}.sqlite") as db:  # the v7 table's columns
        db.execute("CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER) WITHOUT ROWID")
    db.close()
    with pytest.warns(UserWarning, match="could not be used.*building a new one"):
        cache = ScanCache.open()
    assert cache.persistent and (folder / "scan-v7.sqlite").is_dir()
    assert not scan_split(split, cache).bad
