"""The pre-scan's memory: one SQLite row per file, in a folder only this user can change.

A row holds a file's key (size, modification and change times, device, inode), why it is
unusable (or nothing), its content digest, its perceptual hash (once computed) and, for a small
image, its thumbnail (:mod:`classifier.thumbnails`). A file is
looked up by path and its row used only while its key is unchanged. Only changed rows are
written, in transactions committed every few seconds, so a scan stopped with Ctrl-C keeps what
it did. The database is SQLite from the standard library (WAL journal: readers never wait).

The cache decides duplicates and exclusions, so it must be private: a folder that another user
owns or can write to is not used (one warning; the scan runs uncached), and no existing folder's
mode is ever changed. What is inside a private folder is the user's own and trusted: a database
this version cannot use (damaged, or of another make) is moved aside and a new one is built,
and the databases of older versions are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import time
import warnings
from collections.abc import Iterable, Sequence
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
#: The ``files`` table's columns as ``PRAGMA table_info`` lists them (name, declared type).
_EXPECTED_COLUMNS = [(name, kind.split()[0]) for name, kind in _FILE_COLUMNS]


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
    | {"fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.juicefs", "fuse.mountpoint-s3"}
    | {"gfs2", "ocfs2", "orangefs", "fuse.lizardfs", "fuse.moosefs", "quobyte"}
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
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), row[1])
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
        self.persistent = False
        if self.path is not None:
            _remove_older_versions(self.path.parent)
            self.persistent = self._open_or_rebuild(self.path)
        if not self.persistent:
            self._db = self._connect(":memory:")

    def _open_or_rebuild(self, path: Path) -> bool:
        """Open the database at ``path``, creating it privately (0600); one this version
        cannot use is moved aside (``.unusable-<time>``) and built anew. ``False`` (with a
        warning) when neither works: the scan then runs without a cache."""
        for attempt in range(2):
            try:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                self._db = self._connect(str(path))
                return True
            except (OSError, sqlite3.Error) as error:
                # Damaged, or another make: moved aside. Locked (another run writing), or a
                # folder that cannot be written: left alone, and this run goes uncached.
                damaged = isinstance(error, sqlite3.DatabaseError) and not isinstance(
                    error, sqlite3.OperationalError
                )
                if attempt or not damaged:
                    warnings.warn(f"scan cache unused: {path} ({error})", stacklevel=4)
                    return False
                aside = path.with_name(f"{path.name}.unusable-{int(time.time())}")
                warnings.warn(
                    f"scan cache {path} could not be used ({error}); moved to {aside.name}, "
                    "building a new one",
                    stacklevel=4,
                )
                with contextlib.suppress(OSError):
                    path.replace(aside)
                    for end in _SIBLINGS:
                        path.with_name(path.name + end).unlink(missing_ok=True)
        return False

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
                        stacklevel=5,
                    )
                db.execute(f"PRAGMA journal_mode={'DELETE' if network else 'WAL'}")
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.execute(_MEMO_SCHEMA)
            columns = [(row[1], row[2]) for row in db.execute("PRAGMA table_info(files)")]
            if columns != _EXPECTED_COLUMNS:
                raise sqlite3.DatabaseError("its files table is of another version")
        except BaseException:
            db.close()
            raise
        return db

    @classmethod
    def open(cls) -> ScanCache:
        """The user's cache (``$CLASSIFIER_CACHE_DIR``), or an uncached one with a warning."""
        return cls(private_folder(cache_dir()))

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
        cached = np.fromiter(flat, dtype=np.int64, count=5 * len(rows)).reshape(-1, 5)
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


def _remove_older_versions(folder: Path) -> None:
    """Remove the caches of earlier versions (their checks or hashes differ; a file's verdict
    costs one structural check to find again)."""
    for old in (*folder.glob("scan-v*.sqlite*"), *folder.glob("scan-v4-*.json")):
        if not old.name.startswith(f"scan-v{VERSION}.sqlite"):
            with contextlib.suppress(OSError):  # a folder of that name stays
                old.unlink()


def to_signed(value: int) -> int:
    """A 64-bit hash as SQLite's signed 64-bit integer."""
    return value - 2**64 if value >= 2**63 else value
