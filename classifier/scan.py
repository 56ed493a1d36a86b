"""A cached pre-scan that finds unusable image files before training starts.

Every file is decoded fully (``Image.verify()`` misses truncated JPEG tails). Results are cached
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
from pathlib import Path

from PIL import Image

from classifier.files import atomic_write_bytes
from classifier.images import load_pil

#: Cache format version; bump when the checks or the key change.
_VERSION = 2


def cache_dir() -> Path:
    """``$CLASSIFIER_CACHE_DIR`` or ``~/.cache/classifier``."""
    default = Path.home() / ".cache" / "classifier"
    return Path(os.environ.get("CLASSIFIER_CACHE_DIR", default))


def check_file(path: Path) -> str | None:
    """Return why ``path`` cannot be used, or ``None`` if it decodes fully."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        load_pil(path)
    except Image.DecompressionBombError as error:
        return f"decompression bomb: {error}"
    except Exception as error:  # any decoder failure makes the file unusable
        return f"{type(error).__name__}: {error}"
    return None


def _key(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    # ctime cannot be set back by a user (unlike mtime), and a replaced file has a new inode.
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_dev}:{stat.st_ino}"


def _read_cache(cache_file: Path) -> dict[str, list[str | None]]:
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
        and len(entry) == 2
        and isinstance(entry[0], str)
        and (entry[1] is None or isinstance(entry[1], str))
    }


def _write_cache(cache_file: Path, cache: dict[str, list[str | None]]) -> None:
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


def scan_files(paths: Sequence[Path], root: Path, progress: bool = True) -> dict[str, str]:
    """Decode every file in ``paths``; return ``{path: reason}`` for the unusable ones.

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
            results: Iterable[str | None] = pool.map(check_file, todo)
            if progress and len(todo) > 200:
                from rich.progress import track

                results = track(results, total=len(todo), description="Scanning images")
            for path, reason in zip(todo, results, strict=True):
                cache[str(path)] = [keys[str(path)], reason]
        _write_cache(cache_file, cache)
    return {str(p): str(cache[str(p)][1]) for p in paths if cache[str(p)][1] is not None}
