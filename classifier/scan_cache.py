"""The pre-scan's memory: one SQLite row per file, in a folder only this user can change.

A row holds a file's key (size, modification and change times, device, inode), why it is
unusable (or nothing), its content digest, its perceptual hash (once computed) and, for a small
image, its thumbnail (:mod:`classifier.thumbnails`). A file is
looked up by path and its row used only while its key is unchanged. Only changed rows are
written, in transactions committed every few seconds, so a scan stopped with Ctrl-C keeps what
it did. The database is SQLite from the standard library (WAL journal: readers never wait).

The cache decides duplicates and exclusions, so it must be private: a folder that another user
owns or can write to, or a database file that is a link, not ours or writable by others, is not
used (one warning; the scan runs uncached), and no existing folder's mode is ever changed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import stat
import time
import warnings
from collections.abc import Iterable, Sequence
from contextlib import closing
from itertools import chain
from pathlib import Path

import numpy as np

#: Cache format version; bump when the checks, the hashes or the key change.
VERSION = 9
#: The perceptual hash of an image not hashed yet.
UNHASHED = -(2**63)
#: The perceptual hash of an image too small or too flat to have one (compared byte for byte).
NO_HASH = -(2**63) + 1

Row = tuple[bytes, int, int, int, int, int, str | None, bytes | None, int, bytes | None, str | None]

#: The ``files`` table's columns and types, in order (what :data:`Row` holds).
_FILE_COLUMNS = (
    ("path", "BLOB PRIMARY KEY"),
    ("size", "INTEGER"),
    ("mtime", "INTEGER"),
    ("ctime", "INTEGER"),
    ("dev", "INTEGER"),
    ("ino", "INTEGER"),
    ("reason", "TEXT"),
    ("content", "BLOB"),
    ("phash", "INTEGER NOT NULL"),
    ("thumb", "BLOB"),
    ("kind", "TEXT"),
)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS files ("
    + ", ".join(f"{name} {kind}" for name, kind in _FILE_COLUMNS)
    + ") WITHOUT ROWID"
)
_INSERT = f"INSERT OR REPLACE INTO files VALUES ({','.join('?' * len(_FILE_COLUMNS))})"  # noqa: S608
#: Results computed from many rows at once (the small-image near copies of a fit's splits),
#: by a digest of what they were computed from; the newest :data:`MEMO_ROWS` are kept.
_MEMO_SCHEMA = """
CREATE TABLE IF NOT EXISTS memo (key BLOB PRIMARY KEY, value BLOB, used REAL) WITHOUT ROWID
"""
MEMO_ROWS = 16
#: The files SQLite keeps beside a database.
_SIBLINGS = ("-journal", "-wal", "-shm")


def cache_dir() -> Path:
    """``$CLASSIFIER_CACHE_DIR`` or ``~/.cache/classifier``."""
    chosen = os.environ.get("CLASSIFIER_CACHE_DIR", "")
    return Path(chosen) if chosen else Path.home() / ".cache" / "classifier"


def _unsafe(info: os.stat_result, what: str) -> str | None:
    """Why a file or folder with ``info`` must not hold the cache (``None``: it may)."""
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{what} belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by other users"
    return None


def private_folder(folder: Path) -> Path | None:
    """``folder`` if it is (or is now created as) a private folder of this user; else warn
    once and return ``None``. An existing folder's mode is never changed."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as error:
        warnings.warn(f"scan cache unused: {folder}: {error.strerror}", stacklevel=3)
        return None
    problem = "it is a symbolic link" if stat.S_ISLNK(info.st_mode) else _unsafe(info, "it")
    if problem is None and not stat.S_ISDIR(info.st_mode):
        problem = "it is not a folder"
    if problem:
        warnings.warn(
            f"scan cache unused: {folder} ({problem}); the scan runs without a cache. Point "
            "CLASSIFIER_CACHE_DIR at a folder only you can write to.",
            stacklevel=3,
        )
        return None
    return folder


#: File system types (as /proc/mounts names them) that are shared over a network.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs"}
    | {"fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.beegfs", "9p", "afs", "panfs", "wekafs"}
)


def network_filesystem(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the network file system ``path`` lies on, or ``None`` (a local disk, or
    no mount table to read)."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as table:
            rows = [line.split() for line in table]
    except OSError:
        return None
    real, best, kind = os.path.realpath(path), "", ""
    for row in rows:
        if len(row) < 3:
            continue
        point = row[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, row[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


class ScanCache:
    """The rows of the cache database (or of an in-memory one, when no private folder).

    Args:
        folder: the private cache folder, or ``None`` for a cache that lasts this process.
    """

    def __init__(self, folder: Path | None) -> None:
        self.path = None if folder is None else folder / f"scan-v{VERSION}.sqlite"
        self.persistent = self.path is not None and self._prepare(self.path)
        if self.persistent:
            try:
                self._db = self._connect(str(self.path))
            except sqlite3.Error as error:  # damaged, or locked by a stuck process
                warnings.warn(f"scan cache unused: {self.path} ({error})", stacklevel=3)
                self.persistent = False
        if not self.persistent:
            self._db = self._connect(":memory:")
        if self.persistent and folder is not None:
            self._migrate(folder)

    @staticmethod
    def _connect(target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=10, isolation_level=None)
        try:
            if target != ":memory:":
                network = network_filesystem(target)
                if network:  # SQLite: WAL needs shared memory, which network file systems lack
                    warnings.warn(
                        f"scan cache {target} is on a network file system ({network}), where "
                        "SQLite's WAL journal is unsafe; using a slower rollback journal. Set "
                        "CLASSIFIER_CACHE_DIR to a folder on a local disk.",
                        stacklevel=4,
                    )
                db.execute(f"PRAGMA journal_mode={'DELETE' if network else 'WAL'}")
                db.execute("PRAGMA synchronous=NORMAL")
            _check_schema(db)
            db.execute(_SCHEMA)
            db.execute(_MEMO_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def open(cls) -> ScanCache:
        """The user's cache (``$CLASSIFIER_CACHE_DIR``), or an uncached one with a warning."""
        return cls(private_folder(cache_dir()))

    @staticmethod
    def _prepare(path: Path) -> bool:
        """Create the database file privately (0600), or check the one there is ours alone;
        and check that the files SQLite keeps beside it are regular files."""
        problem = None
        try:
            fd = os.open(
                path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600
            )
            os.close(fd)
        except FileExistsError:
            info = os.lstat(path)
            problem = _unsafe(info, "the file")
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
                problem = "it is not a regular file"
        except OSError as error:
            warnings.warn(f"scan cache unused: {path}: {error.strerror}", stacklevel=4)
            return False
        for end in _SIBLINGS:  # SQLite opens these itself (a FIFO there blocks it for ever)
            sibling = path.with_name(path.name + end)
            try:
                if not stat.S_ISREG(os.lstat(sibling).st_mode):
                    problem = f"{sibling.name} is not a regular file"
            except FileNotFoundError:
                continue
            except OSError as error:
                problem = f"{sibling.name}: {error.strerror}"
        if problem:
            warnings.warn(
                f"scan cache unused: {path} ({problem}); the scan runs without a cache.",
                stacklevel=4,
            )
            return False
        return True

    def lookup(
        self, paths: Sequence[bytes], keys: np.ndarray, folder: bytes | None = None
    ) -> list[Row | None]:
        """The cached row of each path whose key (``keys[i]``: size, mtime, ctime, device,
        inode) is unchanged, else ``None``. With ``folder`` (every path lies below it) the
        rows are read in one range scan of the index instead of by path."""
        found: dict[bytes, Row] = {}
        try:
            if folder is not None:
                low, high = folder.rstrip(b"/") + b"/", folder.rstrip(b"/") + b"0"  # "/" + 1
                query = "SELECT * FROM files WHERE path >= ? AND path < ?"
                found.update((row[0], row) for row in self._db.execute(query, (low, high)))
            for start in range(0, len(paths) if folder is None else 0, 900):
                chunk = list(paths[start : start + 900])  # SQLite's limit on bound parameters
                marks = ",".join("?" * len(chunk))
                query = f"SELECT * FROM files WHERE path IN ({marks})"  # noqa: S608 (marks only)
                found.update((row[0], row) for row in self._db.execute(query, chunk))
        except sqlite3.DatabaseError as error:  # a damaged database: scan without it
            warnings.warn(f"scan cache unreadable ({error}); scanning without it", stacklevel=3)
            return [None] * len(paths)
        rows = [found.get(path) for path in paths]
        # The keys compared as one array: 100,000 rows in 0.03 s (key by key as Python lists,
        # 0.25 s, a sixth of a warm start's extra on such a folder).
        missing = (-1,) * 5
        flat = chain.from_iterable(row[1:6] if row is not None else missing for row in rows)
        try:  # SQLite keeps what a column was given: a planted text or NULL key
            cached = np.fromiter(flat, dtype=np.int64, count=5 * len(rows)).reshape(-1, 5)
        except (TypeError, ValueError, OverflowError) as error:
            warnings.warn(f"scan cache unreadable ({error}); scanning without it", stacklevel=3)
            return [None] * len(paths)
        same = (cached == np.asarray(keys, dtype=np.int64).reshape(-1, 5)).all(axis=1)
        return [row if keep else None for row, keep in zip(rows, same.tolist(), strict=True)]

    def store(self, rows: Iterable[Row]) -> None:
        """Write ``rows`` (replacing any earlier row of the same path) in one transaction; a
        cache that cannot be written is a warning, never a failed run."""
        rows = list(rows)
        if not rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT, rows)
        except sqlite3.Error as error:
            warnings.warn(f"scan cache not updated ({error})", stacklevel=3)

    def set_hashes(self, paths: Sequence[bytes], hashes: Sequence[int]) -> None:
        """Record the perceptual hashes computed for ``paths`` (by the loader workers)."""
        pairs = [(int(h), p) for p, h in zip(paths, hashes, strict=True)]
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("UPDATE files SET phash = ? WHERE path = ?", pairs)
        except sqlite3.Error as error:
            warnings.warn(f"scan cache not updated ({error})", stacklevel=3)

    def recall(self, key: bytes) -> bytes | None:
        """The value :meth:`remember` stored under ``key`` (``None``: none, or unreadable)."""
        try:
            row = self._db.execute("SELECT value FROM memo WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        with contextlib.suppress(sqlite3.Error), self._db:  # locked: the older time stays
            self._db.execute("UPDATE memo SET used = ? WHERE key = ?", (time.time(), key))
        return bytes(row[0])

    def remember(self, key: bytes, value: bytes) -> None:
        """Store ``value`` under ``key``, keeping the newest :data:`MEMO_ROWS` values."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR REPLACE INTO memo VALUES (?,?,?)", (key, value, time.time())
                )
                self._db.execute(
                    "DELETE FROM memo WHERE key NOT IN "
                    "(SELECT key FROM memo ORDER BY used DESC LIMIT ?)",
                    (MEMO_ROWS,),
                )
        except sqlite3.Error as error:
            warnings.warn(f"scan cache not updated ({error})", stacklevel=3)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _migrate(self, folder: Path) -> None:
        """Take the reasons of the JSON caches of version 4 (their content digests and
        perceptual hashes were of other kinds and are computed again), then remove them. The
        SQLite caches of versions 5 to 8 are removed unread: reading a database runs what its
        schema says, and a bad file's verdict costs one structural check to find again."""
        for old in sorted(folder.glob("scan-v4-*.json")):
            try:
                info = os.lstat(old)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode) or _unsafe(info, "it"):
                continue
            # Nothing a damaged or planted file holds stops the command (too deep, too large,
            # or no text: it is left out).
            with contextlib.suppress(Exception):
                entries = json.loads(old.read_text())
                if isinstance(entries, dict):
                    self.store(_v4_rows(entries))
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)
        for old in sorted(folder.glob("scan-v[5-8].sqlite")):
            for leftover in (old, *(old.with_name(old.name + end) for end in _SIBLINGS)):
                with contextlib.suppress(OSError):  # a folder of that name stays
                    leftover.unlink(missing_ok=True)


@functools.cache
def _expected_schema() -> frozenset[tuple[str, str, str]]:
    """``(type, name, sql)`` of what :data:`_SCHEMA` and :data:`_MEMO_SCHEMA` create, as SQLite
    records them."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.execute(_SCHEMA)
        db.execute(_MEMO_SCHEMA)
        return frozenset(db.execute("SELECT type, name, sql FROM sqlite_master"))


def _check_schema(db: sqlite3.Connection) -> None:
    """Check that a database holds this version's tables, exactly as it creates them, and
    nothing else: a view, a trigger, a generated column, a check or an index expression would
    run a query of the database's choosing (an endless one hangs the command) on a read or a
    write, and another column type would change the values read back.

    Raises:
        sqlite3.DatabaseError: naming the first object this version does not create.
    """
    expected = _expected_schema()
    for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master"):
        if (kind, name, sql) not in expected:
            raise sqlite3.DatabaseError(f"it holds a {kind} {name!r} this version does not create")


def _v4_rows(entries: dict[str, object]) -> list[Row]:
    rows: list[Row] = []
    for path, entry in entries.items():
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
            continue
        key, reason, _, _ = entry
        try:
            fields = [int(v) for v in key.split(":")]
        except ValueError:
            continue
        if len(fields) != 5 or (reason is not None and not isinstance(reason, str)):
            continue
        if reason is None or not all(-(2**63) <= v < 2**63 for v in fields):
            continue  # nothing worth keeping (the scan reads the file anyway), or no key
        # No content digest yet: the next scan reads the file for it (cheap) and keeps the rest.
        rows.append((os.fsencode(path), *fields, reason, None, UNHASHED, None, None))  # type: ignore[arg-type]
    return rows


def to_signed(value: int) -> int:
    """A 64-bit hash as SQLite's signed 64-bit integer."""
    return value - 2**64 if value >= 2**63 else value
