"""The trainer's checkpoint I/O: safe loads, background writes, one file per training state."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning_utilities.core.apply_func import apply_to_collection
from typing_extensions import override

from classifier.checkpoint import CheckpointError, load_checkpoint
from classifier.files import atomic_write


class SafeCheckpointIO(CheckpointIO):
    """Loads through :func:`~classifier.checkpoint.load_checkpoint`; writes off the training
    thread; writes one file where two callbacks save the same training state.

    Loading: ``weights_only`` and ``map_location`` requests are ignored; loads are always
    weights-only, onto the CPU, after the writes in flight have finished.

    Saving (local files): the tensors are copied to CPU memory on the training thread (a
    point-in-time snapshot; at most one more waits while a write runs), and one background
    thread serialises each into an exclusively created temporary file in the target folder,
    syncs it and renames it over the target, so a file is never half-written, not even on
    SIGKILL. When a save has exactly the training state and contents of the previous one (same
    keys, epoch, step and loop progress: ``best.ckpt`` and ``last.ckpt`` after one validation)
    the file is hard-linked (or copied) instead of written twice; a later write replaces the
    link, never the shared file. Remote paths and custom plugins write through the wrapped
    plugin, on the same thread. Lightning's teardown (end of a run, SIGTERM, Ctrl-C, an error)
    waits for every write.

    Reading back: the snapshot of the newest save stays in memory (CPU) until the next save,
    with the paths that hold it, so :func:`read_back` serves the end-of-fit readers
    (calibration, export) without waiting for the disk or deserialising the file again.

    Args:
        inner: the plugin for remote paths and custom storage (default: Lightning's).
        asynchronous: write on a background thread.
    """

    def __init__(self, inner: CheckpointIO | None = None, asynchronous: bool = True) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()
        self.asynchronous = asynchronous
        #: Lightning's plain writer is replaced by ours (atomic in the target folder, links).
        self.own_writes = type(self.inner) is TorchCheckpointIO
        self._executor: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        self._error: BaseException | None = None
        #: (training-state key, path) of the last checkpoint saved.
        self._last: tuple[str, str] | None = None
        #: The newest snapshot (and rewrites of it), by the paths that hold it.
        self._held: dict[str, dict[str, Any]] = {}

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Snapshot ``checkpoint`` and write it (or link the identical previous one)."""
        self._raise_error()
        target = str(path)
        local = self.own_writes and "://" not in target
        key = _state_key(checkpoint) if local else ""
        previous, self._last = self._last, ((key, target) if key else None)
        if key and previous and previous[0] == key and previous[1] != target:
            shared = self._held.get(os.path.abspath(previous[1]))
            if shared is not None:
                self._held[os.path.abspath(target)] = shared
            self._submit(_link_or_copy, previous[1], target)
            return
        self._held = {}
        if self.asynchronous:
            if self._writing is not None:  # bound the snapshots held in memory to two
                self._writing.result()
            checkpoint = apply_to_collection(checkpoint, torch.Tensor, _snapshot)
            if local:
                self._held[os.path.abspath(target)] = checkpoint
        if local:
            self._writing = self._submit(_save_file, checkpoint, target)
        else:
            self._writing = self._submit(
                self.inner.save_checkpoint, checkpoint, path, storage_options
            )

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with :func:`~classifier.checkpoint.load_checkpoint` (never the full unpickler)."""
        self.wait()
        return load_checkpoint(path)

    @override
    def remove_checkpoint(self, path: Any) -> None:
        """Remove, after the writes queued before."""
        self._held.pop(os.path.abspath(str(path)), None)
        self._submit(self.inner.remove_checkpoint, path)

    def rewrite(self, checkpoint: dict[str, Any], path: str) -> None:
        """Replace the file at ``path`` with ``checkpoint`` (in the background), even where a
        save of the same training state would be linked: a callback amending a finished
        checkpoint (the calibration's temperature). :func:`read_back` then returns it."""
        self._raise_error()
        target = os.path.abspath(path)
        if self._last is not None and os.path.abspath(self._last[1]) == target:
            self._last = None  # no later save may be linked to the amended file
        if not self.own_writes or "://" in path:
            self.wait()
            self.inner.save_checkpoint(checkpoint, path)
            return
        self._held[target] = checkpoint
        self._writing = self._submit(_save_file, checkpoint, target)

    def held(self, path: str) -> dict[str, Any] | None:
        """The checkpoint last saved to ``path`` if it is still in memory. Raises the error of
        a write that failed meanwhile (a held snapshot must not hide a file never written) and
        keeps it for the next call and the teardown, so a caller that turns it into a warning
        cannot make it disappear."""
        if self._error is not None:
            raise self._error
        return self._held.get(os.path.abspath(path))

    def release(self) -> None:
        """Let the newest snapshot go (after the end-of-fit readers)."""
        self._held = {}

    def wait(self) -> None:
        """Block until every queued write is done; raise the first write error."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()
        self._raise_error()

    @override
    def teardown(self) -> None:
        """Finish the queued writes (end of a run, SIGTERM, Ctrl-C, error)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        # The newest snapshot stays readable: Lightning tears down before ``on_fit_end``,
        # where the export reads best.ckpt.
        self._writing, self._last = None, None
        self.inner.teardown()
        self._raise_error()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[None] | None:
        if not self.asynchronous:
            fn(*args)
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="classifier-checkpoint")

        def run() -> None:
            try:
                fn(*args)
            except BaseException as error:  # raised on the training thread at the next call
                self._error = self._error or error

        return self._executor.submit(run)

    def _raise_error(self) -> None:
        """Raise a failed write's error; while another exception is being handled (SIGTERM,
        Ctrl-C), warn instead, so that one still decides how the run ends."""
        error, self._error = self._error, None
        if error is None:
            return
        if sys.exc_info()[0] is not None:
            warnings.warn(f"a checkpoint write failed: {error!r}", stacklevel=3)
            return
        raise error


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A point-in-time copy in CPU memory (GPU memory is not held by queued writes)."""
    return tensor.detach().to("cpu", copy=True)


def _state_key(checkpoint: dict[str, Any]) -> str:
    """What identifies a checkpoint's contents and training state (empty: never linked)."""
    if "loops" not in checkpoint or "global_step" not in checkpoint:
        return ""
    state = (sorted(checkpoint), checkpoint.get("epoch"), checkpoint["global_step"])
    return repr((*state, checkpoint["loops"]))


def _save_file(checkpoint: dict[str, Any], target: str) -> None:
    """``torch.save`` into a new temporary file beside ``target``, synced, then renamed."""
    atomic_write(Path(target), lambda handle: torch.save(checkpoint, handle), sync=True)


def _link_or_copy(source: str, target: str) -> None:
    """Make ``target`` hold the file ``source`` (hard link, else copy), atomically."""
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
    """Route every checkpoint the trainer loads through the safe loader, and its writes
    through :class:`SafeCheckpointIO`.

    Strategies that load sharded checkpoints their own way (FSDP, DeepSpeed) are refused at
    load time with a one-line error instead of unpickling unchecked.
    """
    io = strategy.checkpoint_io
    if not isinstance(io, SafeCheckpointIO):
        strategy.checkpoint_io = SafeCheckpointIO(io)
    if type(strategy).load_checkpoint is not Strategy.load_checkpoint:
        strategy.load_checkpoint = _refuse_own_loader(strategy)  # type: ignore[method-assign]


def _writer(trainer: Any) -> SafeCheckpointIO | None:
    """The trainer's checkpoint I/O when it is ours (every classifier command installs it)."""
    io = getattr(trainer.strategy, "checkpoint_io", None)
    return io if isinstance(io, SafeCheckpointIO) else None


def flush_checkpoints(trainer: Any) -> None:
    """Wait until the checkpoints queued so far are on disk (before reading one back)."""
    if (io := _writer(trainer)) is not None:
        io.wait()


def read_back(trainer: Any, path: str) -> dict[str, Any]:
    """A checkpoint this run saved at ``path``: from memory while it is the newest (do not
    modify it: copy what you change), else from disk once the queued writes are done."""
    if (io := _writer(trainer)) is not None and (held := io.held(path)) is not None:
        return held
    flush_checkpoints(trainer)
    return load_checkpoint(path)


def release_checkpoints(trainer: Any) -> None:
    """Free the snapshot kept for :func:`read_back` (end of fit: test and report follow)."""
    if (io := _writer(trainer)) is not None:
        io.release()


def amend_checkpoint(trainer: Any, path: str, checkpoint: dict[str, Any]) -> None:
    """Replace the checkpoint at ``path`` with ``checkpoint``, through the run's writer when it
    is ours (in the background), else at once; :func:`read_back` returns the new one."""
    if (io := _writer(trainer)) is not None:
        io.rewrite(checkpoint, path)
    else:
        _save_file(checkpoint, path)
