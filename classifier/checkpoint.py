"""Reading checkpoints, safely, through one function.

Every checkpoint this process reads goes through :func:`load_checkpoint`: the command line's
``--ckpt_path`` on every subcommand (whether typed, set in a YAML config or resolved from
``last``), the test after fit, ONNX export and ``ImageClassifier.load_from_checkpoint``.
It reads only a local regular file, always with ``torch.load(weights_only=True)``, so a pickled
payload in a checkpoint is refused instead of run. :class:`SafeCheckpointIO` puts it under the
trainer: Lightning's own loader would otherwise unpickle ``http(s)://`` checkpoints and any
checkpoint given ``weights_only=False`` with the full (code-running) unpickler.

``classifier test|validate|predict --ckpt_path X`` needs no ``--config``: the model and data
arguments stored in the checkpoint become the first config layer, under any ``--config`` and
command-line overrides the user gives.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning_utilities.core.apply_func import apply_to_collection

from classifier.safety import refuse_foreign_class_paths


class CheckpointError(ValueError):
    """The checkpoint cannot be used; the message says why."""


def checkpoint_file(path: str | Path) -> Path:
    """The local file that ``path`` names, refusing URLs, folders, FIFOs and devices.

    Raises:
        CheckpointError: ``path`` is remote, missing, or not a regular file.
    """
    text = str(path)
    if "://" in text:
        raise CheckpointError(
            f"checkpoint {text}: remote checkpoints are not loaded (a checkpoint is a pickle, and "
            "Lightning unpickles URLs with code execution on); download it and pass the file."
        )
    file = Path(text).expanduser()
    try:
        mode = file.stat().st_mode
    except OSError:
        raise CheckpointError(f"checkpoint {file} does not exist.") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(
            f"checkpoint {file} is not a regular file (a folder, FIFO or device)."
        )
    return file


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a local checkpoint file, with errors a user can act on.

    The file is opened without blocking and checked again once open, so a file swapped for a
    FIFO after the first check cannot hang the run.

    Raises:
        CheckpointError: the file is missing, not a regular file, not a Lightning checkpoint,
            truncated, or holds objects other than tensors and plain containers.
    """
    file = checkpoint_file(path)
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise CheckpointError(f"cannot open checkpoint {file}: {error.strerror}.") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CheckpointError(f"checkpoint {file} is not a regular file.")
        try:
            checkpoint = torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(
                f"cannot load checkpoint {file}: {first} (truncated file, or not a classifier "
                "checkpoint; pickled objects other than tensors are refused)."
            ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{file} is not a Lightning checkpoint.")
    return checkpoint


class SafeCheckpointIO(CheckpointIO):
    """The trainer's checkpoint I/O: loads through :func:`load_checkpoint`, writes off the
    training thread, and writes one file where two callbacks save the same state.

    Loading: ``weights_only`` and ``map_location`` requests are ignored; loads are always
    weights-only, onto the CPU, after any write still in flight has finished.

    Saving: the checkpoint's tensors are copied on the training thread (a point-in-time
    snapshot; the containers are rebuilt with them) and the wrapped plugin serialises and
    writes them on one background thread, in order; its atomic write never leaves a
    half-written file. When a second save has exactly the training state of the previous one
    (same epoch, step and loop progress: ``best.ckpt`` and ``last.ckpt`` after the same
    validation), the file is linked (or copied) instead of serialised again. Lightning's
    teardown, at the end of every run and on SIGTERM, Ctrl-C or an error, waits for the writes.

    Args:
        inner: the plugin that writes and removes files (default: Lightning's).
        asynchronous: write on a background thread (off when ``inner`` is already asynchronous).
    """

    def __init__(self, inner: CheckpointIO | None = None, asynchronous: bool = True) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()
        self.asynchronous = asynchronous and not isinstance(self.inner, AsyncCheckpointIO)
        self._executor: ThreadPoolExecutor | None = None
        self._error: BaseException | None = None
        #: (training-state key, path) of the last checkpoint saved.
        self._last: tuple[str, str] | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Snapshot ``checkpoint`` and write it (or link the identical previous one)."""
        self._raise_error()
        key, target = _state_key(checkpoint), str(path)
        previous = self._last
        self._last = (key, target) if key else None
        if key and previous and previous[0] == key and previous[1] != target:
            self._submit(_link_or_copy, previous[1], target)
            return
        if self.asynchronous:
            checkpoint = apply_to_collection(checkpoint, torch.Tensor, _snapshot)
        self._submit(self.inner.save_checkpoint, checkpoint, path, storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with :func:`load_checkpoint` (never with the full unpickler)."""
        self.wait()
        return load_checkpoint(path)

    def remove_checkpoint(self, path: Any) -> None:
        """Remove with the wrapped plugin, after the writes queued before."""
        self._submit(self.inner.remove_checkpoint, path)

    def wait(self) -> None:
        """Block until every queued write is done; raise the first write error."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()
        self._raise_error()

    def teardown(self) -> None:
        """Finish the queued writes (end of a run, SIGTERM, Ctrl-C, error)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._last = None
        self.inner.teardown()
        self._raise_error()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if not self.asynchronous:
            fn(*args)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="classifier-checkpoint")

        def run() -> None:
            try:
                fn(*args)
            except BaseException as error:  # raised on the training thread at the next call
                self._error = self._error or error

        self._executor.submit(run)

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def _state_key(checkpoint: dict[str, Any]) -> str:
    """What identifies a checkpoint's training state (empty: unknown, never deduplicated)."""
    if "loops" not in checkpoint or "global_step" not in checkpoint:
        return ""
    return repr((checkpoint.get("epoch"), checkpoint["global_step"], checkpoint["loops"]))


def _link_or_copy(source: str, target: str) -> None:
    """Make ``target`` hold the file ``source`` (hard link, else copy), atomically."""
    if "://" in source or "://" in target:
        raise CheckpointError(f"cannot link remote checkpoint {source} to {target}")
    folder = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".link.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or no hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_own_loader(strategy: Strategy) -> Callable[..., dict[str, Any]]:
    def refuse(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise CheckpointError(
            f"{type(strategy).__name__} reads checkpoints with its own loader, which cannot be "
            "restricted to weights; resume or evaluate with a single device or DDP instead."
        )

    return refuse


def guard_checkpoint_loads(strategy: Strategy) -> None:
    """Route every checkpoint the trainer loads through :func:`load_checkpoint`.

    Strategies that load sharded checkpoints their own way (FSDP, DeepSpeed) are refused at
    load time with a one-line error instead of unpickling unchecked.
    """
    io = strategy.checkpoint_io
    if not isinstance(io, SafeCheckpointIO):
        strategy.checkpoint_io = SafeCheckpointIO(io)
    if type(strategy).load_checkpoint is not Strategy.load_checkpoint:
        strategy.load_checkpoint = _refuse_own_loader(strategy)  # type: ignore[method-assign]


def config_from_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``data`` config sections of the checkpoint at ``path``."""
    return checkpoint_config(load_checkpoint(path), path)


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``data`` config sections a loaded checkpoint was trained with.

    The weights come from the checkpoint, so ``pretrained`` is turned off; the class order is
    pinned to the checkpoint's.
    """
    model = dict(checkpoint.get("hyper_parameters", {}))
    data = dict(checkpoint.get("datamodule_hyper_parameters", {}))
    refuse_foreign_class_paths(model, f"checkpoint {path} (model hyper-parameters)")
    refuse_foreign_class_paths(data, f"checkpoint {path} (data hyper-parameters)")
    class_names = checkpoint.get("class_names") or model.get("class_names")
    if not class_names:
        raise CheckpointError(f"{path} stores no class names; was it trained by classifier?")
    for section in (model, data):
        for key in ("class_names", "_instantiator", "_class_path"):
            section.pop(key, None)
    model["pretrained"] = False
    data["class_names"] = list(class_names)
    return {"model": model, "data": data}
