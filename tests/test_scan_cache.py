"""The scan cache in the user's own private folder: trusted, so nothing there is checked for
planted queries; a database this version cannot use is moved aside and rebuilt, older versions
go unread, and a database another run holds locked is left alone."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from classifier.scan_cache import UNHASHED, VERSION, ScanCache, cache_dir


def _row(name: bytes) -> tuple[bytes, int, int, int, int, int, None, bytes, int, None, str]:
    return (name, 1, 2, 3, 4, 5, None, b"d" * 16, UNHASHED, None, "JPEG")


def _database() -> tuple[Path, Path]:
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder, folder / f"scan-v{VERSION}.sqlite"


@pytest.mark.parametrize(
    "damage",
    [
        "not a database",
        # the files table of an earlier make: its rows would not be this version's
        "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER) WITHOUT ROWID",
        "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER, mtime INTEGER, ctime INTEGER, "
        "dev INTEGER, ino INTEGER, reason TEXT, content BLOB, phash REAL NOT NULL, thumb BLOB, "
        "kind TEXT) WITHOUT ROWID",
    ],
    ids=["damaged", "old-columns", "column-type"],
)
def test_a_database_this_version_cannot_use_is_moved_aside_and_rebuilt(damage: str) -> None:
    folder, database = _database()
    if damage == "not a database":
        database.write_bytes(b"not a database at all" * 100)
    else:
        with closing(sqlite3.connect(database)) as db:
            db.execute(damage)
            db.commit()
    with pytest.warns(UserWarning, match="could not be used.*moved to.*building a new one"):
        cache = ScanCache.open()
    assert cache.persistent
    assert len(list(folder.glob(f"scan-v{VERSION}.sqlite.unusable-*"))) == 1
    cache.store([_row(b"/data/a.jpg")])
    assert cache.lookup([b"/data/a.jpg"], [[1, 2, 3, 4, 5]])[0] is not None


def test_older_versions_go_unread_and_a_folder_of_that_name_stays() -> None:
    folder, _ = _database()
    for name in ("scan-v8.sqlite", "scan-v8.sqlite-wal", "scan-v4-abc.json"):
        (folder / name).write_text("old")
    (folder / "scan-v7.sqlite").mkdir()
    cache = ScanCache.open()
    assert cache.persistent
    names = sorted(p.name for p in folder.iterdir())
    assert "scan-v7.sqlite" in names
    assert not [n for n in names if n.startswith(("scan-v8", "scan-v4"))]


def test_a_database_another_run_holds_locked_is_left_alone() -> None:
    _, database = _database()
    ScanCache.open().close()
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.warns(UserWarning, match="scan cache unused.*locked"):
            cache = ScanCache(database.parent)
        assert not cache.persistent and database.exists()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
