"""A cached pre-scan that finds unusable image files before training starts.

Each file not in the cache is read once: its bytes give the content digest (exact copies) and a
structural check (a readable header of an allowed format, the size under the pixel limit, a
JPEG's end-of-image marker after its scan data, a PNG's IEND chunk), which finds empty,
truncated, non-image, disallowed and decompression-bomb files at a tenth of the cost of a full
decode (``make bench``). Formats without such a cheap check (GIF, WebP, BMP, TIFF, PPM) are
decoded fully. The perceptual hash of the near-duplicate check needs the pixels, so it is taken
where the image is decoded anyway: in the loader workers during the first epoch
(:mod:`classifier.image_dataset`), or here (:func:`hash_files`) for images training does not
decode. Small images (a side under :data:`~classifier.perceptual_hash.MIN_SIDE`) are cheap
to decode, so they are decoded fully here and get their thumbnail
(:mod:`classifier.thumbnails`) at once.
Results live in :class:`~classifier.scan_cache.ScanCache`.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from classifier.perceptual_hash import MIN_SIDE
from classifier.pil_decode import ALLOWED_FORMATS, check_pixels, decode_pil, read_file
from classifier.scan_cache import NO_HASH, UNHASHED, Row, ScanCache
from classifier.splits import Split

#: Formats checked by their structure alone (the others are decoded fully).
_STRUCTURAL = frozenset({"JPEG", "MPO", "PNG"})
T = TypeVar("T")
U = TypeVar("U")
#: Files per task of the scan's processes and of the hashing threads.
CHUNK = 64
#: Files from which the scan checks on several processes (starting them costs about 0.1 s).
PROCESSES_FROM = 2000
#: Seconds between the commits of a long scan (what a Ctrl-C keeps).
COMMIT_EVERY_S = 2.0


@dataclass
class ScanResult:
    """What the pre-scan found for each file of a split.

    Attributes:
        bad: ``{index: reason}`` of the files that cannot be used.
        content: each file's 16-byte content digest (``b""`` for bad files).
        phash: each file's perceptual hash (:data:`~classifier.scan_cache.UNHASHED` when not
            computed yet, :data:`~classifier.scan_cache.NO_HASH` for images too small or flat).
        thumbs: each file's thumbnail (:func:`classifier.thumbnails.thumbnail`; ``b""`` for
            none: images not small, or too small).
        kinds: each file's format (``Checked.kind``, at most 4 bytes: ``JPEG``, ``PNG``, ...).
        cached: how many files came from the cache.
    """

    bad: dict[int, str]
    content: np.ndarray
    phash: np.ndarray
    thumbs: np.ndarray
    kinds: np.ndarray
    cached: int


class Checked(NamedTuple):
    """The verdict on one file."""

    #: Why the file cannot be used (``None``: it can).
    reason: str | None
    #: Its 16-byte content digest (``b""`` for a bad file).
    digest: bytes
    #: Whether it is too small for a perceptual hash (its side under ``MIN_SIDE``).
    small: bool = False
    #: Its thumbnail, for a small image (``b""``: none).
    thumb: bytes = b""
    #: Its format as PIL names it (``JPEG``, ``PNG``, ...; ``""`` for a bad file).
    kind: str = ""


def check_file(path: bytes | str) -> Checked:
    """Whether the file at ``path`` is a usable image, its content digest and, for a small
    image (decoded fully: cheap at that size), its thumbnail."""
    from classifier.thumbnails import thumbnail

    try:
        data = read_file(path)
        if not data:
            return Checked("empty file", b"")
        digest = hashlib.sha256(data).digest()[:16]
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            check_pixels(*image.size, os.fsdecode(path))
            kind, small = image.format, min(image.size) < MIN_SIDE
        if kind not in ALLOWED_FORMATS:
            return Checked(f"format {kind} is not an allowed image format", b"")
        problem = _truncated(data, kind) if kind in _STRUCTURAL else None
        if problem:
            return Checked(problem, b"")
        if kind in _STRUCTURAL and not small:
            return Checked(None, digest, kind=kind)
        pixels = decode_pil(data)
        return Checked(None, digest, small, (thumbnail(pixels) or b"") if small else b"", kind)
    except Image.DecompressionBombError as error:
        return Checked(f"decompression bomb: {error}", b"")
    except UnidentifiedImageError:  # its message names an in-memory buffer, not the file
        return Checked("not an image PIL can identify", b"")
    except Exception as error:  # any reader failure makes the file unusable
        return Checked(f"{type(error).__name__}: {error}", b"")


def _truncated(data: bytes, kind: str | None) -> str | None:
    """Why a JPEG or PNG is cut short (``None``: it ends as it should)."""
    if kind == "PNG":
        return None if data.rfind(b"IEND") > 8 else "truncated PNG (no IEND chunk)"
    scan = _first_scan(data)
    if scan is None:
        return "JPEG without image data (no start-of-scan marker)"
    # Scan data never holds a bare 0xFFD9 (0xFF is stuffed as 0xFF00), so an end-of-image marker
    # after its start ends the image; bytes after it (camera trailers, MPO frames) are fine. The
    # last marker is searched from the end: a few bytes, not the whole scan data (0.08 ms).
    return None if data.rfind(b"\xff\xd9") >= scan else "truncated JPEG (no end-of-image marker)"


def _first_scan(data: bytes) -> int | None:
    """Where a JPEG's first scan data begins, walking its segments (``None``: nowhere)."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:
            at += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:
            at += 2
        else:
            length = int.from_bytes(data[at + 2 : at + 4], "big")
            if marker == 0xDA:
                return at + 2 + length
            at += 2 + length
    return None


def _threads() -> int:
    return max(2, os.cpu_count() or 2)


def scan_split(split: Split, cache: ScanCache, progress: bool = True) -> ScanResult:
    """Check every file of ``split`` not already checked in ``cache`` (by path and key)."""
    count = len(split)
    raw = split.paths.all_raw()
    # Rows of annotation files may name images outside the split's folder: looked up by path.
    folder = os.fsencode(split.root) if split.origins is None else None
    rows = cache.lookup(raw, split.keys, folder)
    content = np.full(count, b"", dtype="S16")
    phash = np.full(count, UNHASHED, dtype=np.int64)
    thumbs = np.full(count, b"", dtype=object)
    kinds = np.full(count, b"", dtype="S4")
    bad: dict[int, str] = {}
    todo: list[int] = []
    kept: dict[int, int] = {}  # perceptual hashes of rows that lack only their digest (v4)
    for i, row in enumerate(rows):
        if row is None:
            todo.append(i)
        elif row[6] is not None:
            bad[i] = row[6]
        elif row[7] is None:
            todo.append(i)
            kept[i] = row[8]
        else:
            content[i], phash[i], thumbs[i], kinds[i] = row[7], row[8], row[9] or b"", row[10] or ""
    for i, checked in _checked(raw, todo, split.name, progress, cache, split.keys, kept):
        if checked.reason is not None:
            bad[i] = checked.reason
        else:
            content[i], phash[i], thumbs[i], kinds[i] = (
                checked.digest,
                _phash(checked, i, kept),
                checked.thumb,
                checked.kind,
            )
    return ScanResult(bad, content, phash, thumbs, kinds, count - len(todo))


def _phash(checked: Checked, index: int, kept: dict[int, int]) -> int:
    """The perceptual hash to record for a checked file (small ones have none)."""
    if checked.reason is not None or checked.small:
        return NO_HASH
    return kept.get(index, UNHASHED)


def _checked(
    raw: list[bytes],
    todo: list[int],
    name: str,
    progress: bool,
    cache: ScanCache,
    keys: np.ndarray,
    kept: dict[int, int],
) -> Iterator[tuple[int, Checked]]:
    """Check the files ``todo`` (:func:`_verdicts`), storing results in ``cache`` every few
    seconds (and what was done when the scan is stopped)."""
    if not todo:
        return
    pending: list[Row] = []
    last = time.monotonic()
    try:
        results = _verdicts([raw[i] for i in todo])
        shown = _shown(results, len(todo), f"Scanning {name}/", progress)
        for i, result in zip(todo, shown, strict=True):
            size, mtime, ctime, device, inode = (int(v) for v in keys[i])
            row: Row = (
                raw[i],
                size,
                mtime,
                ctime,
                device,
                inode,
                result.reason,
                result.digest or None,
                _phash(result, i, kept),
                result.thumb or None,
                result.kind or None,
            )
            pending.append(row)
            if time.monotonic() - last > COMMIT_EVERY_S:
                cache.store(pending)
                pending, last = [], time.monotonic()
            yield i, result
    finally:
        cache.store(pending)


def _verdicts(paths: list[bytes]) -> Iterator[Checked]:
    """:func:`check_file` of each of ``paths``, in order: here for a few files, on one forked
    process per core for :data:`PROCESSES_FROM` or more. Not on threads: most of a check holds
    Python's GIL, and two threads made the scan 1.7x (photos) to 2.7x (28 px digits) slower
    than one; two processes made it 1.9x faster on 5,000 digits (two cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if len(paths) < PROCESSES_FROM or cores < 2 or sys.platform != "linux":
        yield from map(check_file, paths)
        return
    context = multiprocessing.get_context("fork")  # nothing imported again, sys.path untouched
    pool = ProcessPoolExecutor(cores, mp_context=context, initializer=_ignore_interrupts)
    try:
        yield from pool.map(check_file, paths, chunksize=CHUNK)
    finally:  # stopped (Ctrl-C): the chunks being checked finish, the rest are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_interrupts() -> None:
    """In a scan process: leave Ctrl-C to the command, which stops the scan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _mapped(pool: ThreadPoolExecutor, work: Callable[[U], T], items: list[U]) -> Iterator[T]:
    """``work`` of each of ``items``, in order, on ``pool``'s threads, :data:`CHUNK` items per
    task: one task per file costs more in hand-offs between threads than a check does."""
    chunks = [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]
    for done in pool.map(lambda chunk: [work(item) for item in chunk], chunks):
        yield from done


def _shown(results: Iterable[T], total: int, what: str, progress: bool) -> Iterator[T]:
    """``results``, with a progress bar (files/s, time left) for a long scan on a terminal (in
    a log a bar is one blank line)."""
    from rich.console import Console

    console = Console()
    if not progress or total < 500 or not console.is_terminal:
        yield from results
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("scan", total=total, rate="")
        for done, result in enumerate(results, 1):
            if done % 64 == 0 or done == total:
                rate = done / max(1e-9, time.monotonic() - start)
                bar.update(task, completed=done, rate=f"{rate:,.0f} files/s")
            yield result


def hash_files(
    load: Callable[[int], np.ndarray | None], indices: list[int], name: str, progress: bool = True
) -> dict[int, int]:
    """Perceptual hashes of the images at ``indices`` (``load(i)`` decodes one as ``uint8``
    CHW, or gives ``None`` when it cannot), on threads; for images training does not decode."""
    from classifier.perceptual_hash import phash_of

    def one(index: int) -> int:
        image = load(index)
        return NO_HASH if image is None else phash_of(image)

    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        done = _shown(_mapped(pool, one, indices), len(indices), f"Hashing {name}/", progress)
        values = list(done)
    return dict(zip(indices, values, strict=True))
