"""A cached pre-scan that finds unusable image files before training starts.

Every file is decoded fully (``Image.verify()`` misses truncated JPEG tails), and hashed for the
duplicate check while it is in memory (:mod:`classifier.health`). Results are cached
per file (path, size, modification and change times, inode) in a private folder outside the data
folder, so a second run on the same folder only re-reads files that changed, including a file
replaced by another of the same size with its modification time restored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from classifier.files import atomic_write_bytes
from classifier.health import content_hash, dhash
from classifier.tensor_decode import load_pil

#: Cache format version; bump when the checks, the hashes or the key change.
_VERSION = 4

#: A cache entry: [file key, reason it is unusable or None, content hash, perceptual hash].
Entry = list[str | None]


@dataclass
class ScanResult:
    """What the pre-scan found.

    Attributes:
        bad: ``{path: reason}`` of files that cannot be used.
        hashes: ``{path: (content hash, 64-bit perceptual hash or None for small images)}``
            of the usable files.
    """

    bad: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, tuple[str, int | None]] = field(default_factory=dict)


def cache_dir() -> Path:
    """``$CLASSIFIER_CACHE_DIR`` or ``~/.cache/classifier``."""
    default = Path.home() / ".cache" / "classifier"
    return Path(os.environ.get("CLASSIFIER_CACHE_DIR", default))


def check_file(path: Path) -> tuple[str | None, str | None, str | None]:
    """``(why path cannot be used, None, None)``, or ``(None, content hash, perceptual hash
    in hex)`` if it decodes fully."""
    try:
        if path.stat().st_size == 0:
            return "empty file", None, None
        perceptual = dhash(load_pil(path))
        return None, content_hash(path), "" if perceptual is None else f"{perceptual:016x}"
    except Image.DecompressionBombError as error:
        return f"decompression bomb: {error}", None, None
    except Exception as error:  # any decoder failure makes the file unusable
        return f"{type(error).__name__}: {error}", None, None


def _key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    # ctime cannot be set back by a user (unlike mtime), and a replaced file has a new inode.
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_dev}:{stat.st_ino}"


def _read_cache(cache_file: Path) -> dict[str, Entry]:
    """The cache's well-formed entries; anything else (another shape, corruption) is dropped."""
    try:
        raw = json.loads(cache_file.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        path: entry
        for path, entry in raw.items()
        if isinstance(entry, list)
        and len(entry) == 4
        and all(value is None or isinstance(value, str) for value in entry)
        and isinstance(entry[0], str)
        and (entry[1] is not None or (entry[2] is not None and _is_hex(entry[3])))
    }


def _is_hex(value: str | None) -> bool:
    if value == "":  # an image too small for a perceptual hash
        return True
    try:
        return value is not None and 0 <= int(value, 16) < 2**64
    except ValueError:
        return False


def _write_cache(cache_file: Path, cache: dict[str, Entry]) -> None:
    """Save the cache where only this user can read it (folder 0700, file 0600); never fail
    the run. An existing folder of this user's is made private too."""
    folder = cache_file.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid == os.getuid():
            folder.chmod(0o700)
        atomic_write_bytes(cache_file, json.dumps(cache).encode(), mode=0o600)
    except OSError:
        pass  # a read-only home must not stop training; the scan reruns next time


def scan_files(paths: Sequence[Path], root: Path, progress: bool = True) -> ScanResult:
    """Decode and hash every file in ``paths`` (files unchanged since the cached scan are not
    read again).

    Args:
        paths: image files to check.
        root: the data folder, naming the cache file.
        progress: show a progress bar while scanning files not yet cached.
    """
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    cache_file = cache_dir() / f"scan-v{_VERSION}-{digest}.json"
    cache = _read_cache(cache_file)
    keys = {str(p): _key(p) for p in paths}  # a file gone since the walk is scanned (and fails)
    todo = [p for p in paths if cache.get(str(p), [None])[0] != keys[str(p)]]
    if todo:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            results: Iterable[tuple[str | None, str | None, str | None]] = pool.map(
                check_file, todo
            )
            if progress and len(todo) > 200:
                from rich.progress import track

                results = track(results, total=len(todo), description="Scanning images")
            for path, (reason, content, perceptual) in zip(todo, results, strict=True):
                cache[str(path)] = [keys[str(path)], reason, content, perceptual]
        _write_cache(cache_file, cache)
    result = ScanResult()
    for name in [str(p) for p in paths]:
        _, reason, content, perceptual = cache[name]
        if reason is not None:
            result.bad[name] = reason
        else:
            result.hashes[name] = (str(content), int(perceptual, 16) if perceptual else None)
    return result
