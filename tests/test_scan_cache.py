"""A cache database planted in the cache folder runs no query of its own: a view in the files
table's place or a trigger (an endless recursive query in either would hang every command)."""

from __future__ import annotations

import sqlite3
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
    with pytest.warns(UserWarning, match="scan cache unused.*is not a plain table"):
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
