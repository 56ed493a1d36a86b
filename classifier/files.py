"""Small file helpers: atomic writes and run-folder lookup."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` if it is missing or malformed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Atomically write a CSV file with a header row."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
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


def safe_name(name: str, max_len: int = 64) -> str:
    """A class or metric name made safe for a file name (no ``/``, ``..``, newlines)."""
    cleaned = re.sub(r"[^\w.-]+", "_", name, flags=re.UNICODE).strip("._") or "unnamed"
    return cleaned[:max_len]


def run_of_checkpoint(ckpt_path: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt``, where ``<run>``
    holds ``config.yaml``, ``hparams.yaml`` or ``metrics.csv``), else ``None``."""
    folder = ckpt_path.resolve().parent
    run = folder.parent
    markers = ("config.yaml", "hparams.yaml", "metrics.csv")
    if folder.name == "checkpoints" and any((run / m).is_file() for m in markers):
        return run
    return None
