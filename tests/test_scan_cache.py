"""A cache database planted in the cache folder runs no query of its own (a view in the files
table's place, a trigger, a generated column: an endless recursive query in any would hang every
command), blocks nothing, and a damaged one is a warning, never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from classifier.scan_cache import UNHASHED, VERSION, ScanCache, cache_dir

#: A view with the files table's columns, over a table the test watches.
_VIEW = """
CREATE VIEW files AS SELECT CAST(x AS BLOB) AS path, 1 AS size, 1 AS mtime, 1 AS ctime,
    1 AS dev, 1 AS ino, 'planted' AS reason, NULL AS content, 0 AS phash, NULL AS thumb,
    NULL AS kind FROM ran
"""


def _row(name: bytes) -> tuple[bytes, int, int, int, int, int, None, bytes, int, None, str]:
    return (name, 1, 2, 3, 4, 5, None, b"d" * 16, UNHASHED, None, "JPEG")


def _planted(plant: str, version: int = VERSION) -> Path:
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True)
    database = folder / f"scan-v{version}.sqlite"
    if plant == "trigger":
        ScanCache(folder).close()  # a genuine database, then the trigger
    with closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE ran (x)")
        if plant == "view":
            db.execute(_VIEW)
        else:
            db.execute(
                "CREATE TRIGGER t AFTER INSERT ON files BEGIN INSERT INTO ran VALUES (1); END"
            )
        db.commit()
    return database


@pytest.mark.parametrize("plant", ["view", "trigger"])
def test_a_planted_view_or_trigger_makes_the_cache_unused(plant: str) -> None:
    database = _planted(plant)
    with pytest.warns(UserWarning, match="scan cache unused.*this version does not create"):
        cache = ScanCache.open()
    assert not cache.persistent
    cache.store([_row(b"/data/train/a/1.jpg")])
    assert cache.lookup([b"/data/train/a/1.jpg"], [[1, 2, 3, 4, 5]])[0] is not None
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT count(*) FROM ran").fetchone() == (0,)


def test_an_older_cache_with_a_view_gives_nothing_and_goes() -> None:
    old = _planted("view", version=8)
    with closing(sqlite3.connect(old)) as db:
        db.execute("INSERT INTO ran VALUES (1)")  # the view would give a planted verdict
        db.commit()
    cache = ScanCache.open()
    assert cache.persistent and not old.exists()
    assert cache.lookup([b"1"], [[1, 1, 1, 1, 1]]) == [None]


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER, mtime INTEGER, ctime INTEGER, "
        "dev INTEGER, ino INTEGER, reason TEXT, content BLOB, phash REAL NOT NULL, thumb BLOB, "
        "kind TEXT) WITHOUT ROWID",  # hashes would come back as floats, their low bits lost
        "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER, mtime INTEGER, ctime INTEGER, "
        "dev INTEGER, ino INTEGER, reason TEXT, content BLOB, phash INTEGER NOT NULL, "
        "thumb BLOB, kind TEXT, slow AS (length(printf('%.*c', 1000, 'x')))) WITHOUT ROWID",
    ],
    ids=["column-type", "generated-column"],
)
def test_a_files_table_of_another_make_is_not_used(schema: str) -> None:
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True)
    with closing(sqlite3.connect(folder / f"scan-v{VERSION}.sqlite")) as db:
        db.execute(schema)
    with pytest.warns(UserWarning, match="this version does not create"):
        assert not ScanCache.open().persistent


def test_a_fifo_beside_the_database_blocks_nothing() -> None:
    ScanCache.open().close()
    os.mkfifo(cache_dir() / f"scan-v{VERSION}.sqlite-journal")
    opened: list[ScanCache] = []
    with pytest.warns(UserWarning, match="sqlite-journal is not a regular file"):
        worker = threading.Thread(target=lambda: opened.append(ScanCache.open()), daemon=True)
        worker.start()
        worker.join(timeout=10)
    assert opened and not opened[0].persistent


def test_a_damaged_version_4_cache_or_row_is_no_traceback() -> None:
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True)
    entry = ["1:2:3:4:5", "bad", None, None]
    (folder / "scan-v4-deep.json").write_text("[" * 200_000)
    (folder / "scan-v4-big.json").write_text(
        json.dumps({"/a.jpg": ["1:2:3:4:" + "9" * 30, *entry[1:]]})
    )
    (folder / "scan-v4-text.json").write_text(
        json.dumps({"/b.jpg": [entry[0], "\ud800", None, None]})
    )
    cache = ScanCache.open()
    assert cache.persistent and not list(folder.glob("scan-v4-*"))
    with closing(sqlite3.connect(cache.path)) as db:  # a key of another type, planted
        db.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (b"/c/d.jpg", "x", *[1] * 4, None, None, 0, None, None),
        )
        db.commit()
    with pytest.warns(UserWarning, match="scan cache unreadable"):
        assert cache.lookup([b"/c/d.jpg"], [[1, 1, 1, 1, 1]], b"/c") == [None]
