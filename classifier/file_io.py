"""Small file helpers: atomic writes and run-folder lookup."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from classifier.errors import csv_cell, printable

if TYPE_CHECKING:  # torch-free at run time: classifier-predict uses it
    import lightning.pytorch as pl


@functools.cache
def file_mode() -> int:
    """Permissions of a newly created file under this process's umask (0o644 under 022).

    Read from ``/proc/self/status`` where Linux offers it; elsewhere ``os.umask`` can only be
    read by setting it, which is done once, on the first write, never at import.
    """
    try:
        status = Path("/proc/self/status").read_text()
        mask = int(
            next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8
        )
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(
    path: Path, write: Callable[[BinaryIO], object], mode: int | None = None, sync: bool = False
) -> None:
    """Write ``path`` through a temporary file and a rename, so it is never half-written.

    The temporary file is created exclusively (``mkstemp``) in the target folder, so nothing
    planted at a predictable name can redirect the write, and the rename replaces a link at
    ``path`` instead of writing through it. The file gets the usual permissions (``0o644``
    under umask 022) unless ``mode`` says otherwise, so teammates and tools can read a run's
    outputs.

    Args:
        path: the file to write.
        write: writes the contents into the open binary file it is given.
        mode: the file's permissions (default: as the umask gives new files).
        sync: flush the data to disk before the rename (checkpoints: survive a crash).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda handle: handle.write(data), mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8).

    File names that are not valid UTF-8 (Python holds their bytes as lone surrogates) are
    written escaped, ``caf\\xe9.jpg``, instead of failing after the work is done.
    """
    try:
        # Bytes back as they were on disk, then each byte that is not UTF-8 as ``\xNN``.
        readable = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        readable = text
    atomic_write_bytes(path, readable.encode("utf-8", errors="backslashreplace"))


#: The largest run file read back (a report embeds PNGs, CSVs and JSON of the run).
READ_LIMIT = 64 * 2**20


def read_regular(path: Path, limit: int = READ_LIMIT) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else ``None``.

    Run folders may come from someone else: a symlink planted there (``loss_history.png ->
    ~/.ssh/id_rsa``) is not followed (``O_NOFOLLOW``), and a FIFO or device is never read
    (opened without blocking, checked with ``fstat`` once open).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # missing, a link, or not readable
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = handle.read(limit + 1)
    return data if len(data) <= limit else None


def read_json(path: Path) -> Any:
    """The JSON in ``path`` (a regular file, :func:`read_regular`), or ``None`` if it is
    missing, refused or malformed."""
    data = read_regular(path)
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of the CSV file ``path`` (a regular file, :func:`read_regular`); ``[]`` if it
    is missing, refused or not text."""
    data = read_regular(path)
    try:
        text = "" if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    return list(csv.DictReader(io.StringIO(text, newline="")))


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON; a NaN or infinite number is written as
    ``null`` (JSON has no such numbers: a bare ``NaN`` breaks every strict reader)."""
    text = json.dumps(_finite_or_null(data), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _finite_or_null(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(v) for v in data]
    return data


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line (``annotations.jsonl``'s format)."""
    lines = (json.dumps(_finite_or_null(r), ensure_ascii=False, allow_nan=False) for r in rows)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Atomically write a CSV file with a header row. Text cells that a spreadsheet would run
    as a formula (``=``, ``+``, ``-``, ``@`` first) are written as text (:func:`csv_cell`)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(h) for h in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    atomic_write_text(path, buffer.getvalue())


def run_dir(trainer: pl.Trainer) -> Path:
    """The run's own folder: the logger's versioned folder, else ``default_root_dir``.

    CSV and TensorBoard loggers name it (``save_dir/name/version_N``); for loggers without one
    (WandB, MLflow) it is ``save_dir/name/version``, where Lightning puts their checkpoints,
    so two runs never share a folder. Unlike ``trainer.log_dir`` this is no collective:
    callers run on rank 0 alone, where a broadcast would wait forever for the other ranks.
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    folder = getattr(logger, "log_dir", None) if hasattr(logger, "version") else None
    if folder:
        return Path(folder)
    save_dir, version = logger.save_dir, getattr(logger, "version", None)
    if save_dir and version is not None:
        version = version if isinstance(version, str) else f"version_{version}"
        return Path(save_dir) / str(logger.name or "") / version
    return Path(save_dir or trainer.default_root_dir)


def rank_zero_run_dir(trainer: pl.Trainer | None) -> Path | None:
    """The run folder on rank 0, where reports are written; ``None`` on other ranks and
    without a trainer."""
    if trainer is not None and trainer.is_global_zero:
        return run_dir(trainer)
    return None


def plain_name(name: str, option: str) -> str:
    """``name`` if it is a plain file name (no folder, not ``.`` or ``..``, no control
    characters), for options naming a file inside the results folder.

    Raises:
        ConfigError: ``name`` would put the file elsewhere (``/home/me/.bashrc``,
            ``../x.csv``).
    """
    from classifier.errors import ConfigError

    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or os.sep in name
        or printable(name) != name
    ):
        raise ConfigError(
            f"{option} must be a plain file name inside the results folder, got {name!r}"
        )
    return name


def safe_name(name: str, max_len: int = 64) -> str:
    """A class or metric name made safe for a file name (no ``/``, ``..``, newlines)."""
    cleaned = re.sub(r"[^\w.-]+", "_", name, flags=re.UNICODE).strip("._") or "unnamed"
    return cleaned[:max_len]


def unique_safe_names(names: list[str]) -> list[str]:
    """:func:`safe_name` of each of ``names``, made unique by a ``_2``, ``_3`` ... suffix
    (``a/b`` and ``a_b``, ``cat`` and ``cat `` would otherwise share one metric column)."""
    taken: set[str] = set()
    found = []
    for name in names:
        base = candidate = safe_name(name)
        number = 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        taken.add(candidate)
        found.append(candidate)
    return found


def run_of_checkpoint(ckpt_path: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt``, where ``<run>``
    holds ``config.yaml``, ``hparams.yaml`` or ``metrics.csv``), else ``None``.

    Found as the path says, never through a link: a ``checkpoints`` folder or a run folder
    that is a symlink (or a marker that is one) makes it no run, so nothing is written into
    the folder a link points at.
    """
    folder = Path(os.path.abspath(ckpt_path)).parent
    run = folder.parent
    markers = ("config.yaml", "hparams.yaml", "metrics.csv")
    if folder.name != "checkpoints" or folder.is_symlink() or run.is_symlink():
        return None
    if any(_is_regular(run / m) for m in markers):
        return run
    return None


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` once links are resolved."""
    real = os.path.realpath(path)
    return real.startswith(os.path.realpath(folder) + os.sep)


def _is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
