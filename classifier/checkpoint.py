"""Reading checkpoints, safely, through one function.

Every checkpoint this process reads goes through :func:`load_checkpoint`: the command line's
``--ckpt_path`` on every subcommand (whether typed, set in a YAML config or resolved from
``last``), the test after fit, ONNX export and ``ImageClassifier.load_from_checkpoint``.
It reads only a local regular file, always with ``torch.load(weights_only=True)``, so a pickled
payload in a checkpoint is refused instead of run.
:class:`~classifier.checkpoint.SafeCheckpointIO` puts it under the trainer: Lightning's own
loader would otherwise unpickle ``http(s)://`` checkpoints and any checkpoint given
``weights_only=False`` with the full (code-running) unpickler.

``classifier test|validate|predict --ckpt_path X`` needs no ``--config``: the model and data
arguments stored in the checkpoint become the first config layer, under any ``--config`` and
command-line overrides the user gives.

The trainer's checkpoint I/O: safe loads, atomic writes, one file per training state.

What classifier reads from a loaded checkpoint, checked, and what it never takes from one.

A checkpoint may come from someone else. After ``torch.load(weights_only=True)`` (no code
runs), its contents could still be hostile data: hyper-parameters that are not mappings, class
names that are not strings, image sizes that exhaust memory, NaN weights that give impossible
metrics, or callback states whose paths make Lightning's ``ModelCheckpoint`` delete or rewrite
files anywhere when a run resumes. :func:`problem` finds the first; :func:`forget_checkpoint_paths`
drops the paths.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning_utilities.core.apply_func import apply_to_collection
from typing_extensions import override

from classifier.checked_values import (
    class_names_problem,
    preprocessing_problem,
    rule_problem,
    seed_problem,
    side_problem,
    statistics_problem,
    temperature_problem,
)
from classifier.errors import UserError
from classifier.file_io import atomic_write

if TYPE_CHECKING:
    from torch import nn

    from classifier.selective import Selector


#: ``ModelCheckpoint`` state entries that name files: on resume Lightning would remove (even
#: recursively) or rewrite what they name, wherever that is.
_PATH_KEYS = ("best_model_path", "last_model_path", "kth_best_model_path")


def forget_checkpoint_paths(checkpoint: dict[str, Any], folder: str | None = None) -> None:
    """In every ``ModelCheckpoint`` state of ``checkpoint``, blank each file path that is not a
    ``.ckpt`` file in ``folder`` (the folder the checkpoint was read from, links resolved;
    ``None``: blank them all), the same in the top-k table, and the folder unless it is that
    one: Lightning removes and rewrites what these name. A checkpoint read from elsewhere
    leaves a resumed run tracking its checkpoints in its own folder."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return
    for state in callbacks.values():
        if isinstance(state, dict) and any(k in state for k in (*_PATH_KEYS, "best_k_models")):
            for key in _PATH_KEYS:
                if key in state and not _beside(state[key], folder):
                    state[key] = ""
            table = state.get("best_k_models")
            if table is not None:
                kept = table.items() if isinstance(table, dict) else ()
                state["best_k_models"] = {k: v for k, v in kept if _beside(k, folder)}
            if not _same_folder(state.get("dirpath"), folder):
                state["dirpath"] = ""


def _beside(path: object, folder: str | None) -> bool:
    if folder is None or not isinstance(path, str) or not path.endswith(".ckpt"):
        return False
    return os.path.dirname(os.path.realpath(path)) == folder


def _same_folder(path: object, folder: str | None) -> bool:
    return folder is not None and isinstance(path, str) and os.path.realpath(path) == folder


def problem(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with the parts of ``checkpoint`` classifier reads (``None``: nothing)."""
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        return "its state_dict is not a mapping of names to tensors"
    if not _finite_leaves(weights):
        return "its weights hold NaN or infinite values, or non-dense tensors"
    legacy = weights.get("temperature")
    if legacy is not None:
        found = temperature_problem(float(legacy) if legacy.numel() == 1 else None)
        if found:
            return found
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        section = checkpoint.get(key, {})
        if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
            return f"its {key} are not a mapping of argument names"
    data = checkpoint.get("datamodule_hyper_parameters", {})
    found = side_problem(data.get("image_size", 1), "data image_size")
    if found:
        return found
    names = checkpoint.get("class_names", checkpoint.get("hyper_parameters", {}).get("class_names"))
    found = None if names is None else class_names_problem(names)
    if found:
        return found
    temperature = checkpoint.get("temperature", 1.0)
    if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
        temperature = float(temperature)
    found = temperature_problem(temperature)
    if found:
        return found
    selective = checkpoint.get("selective")
    if selective is not None:
        found = _selective_problem(selective, len(names) if isinstance(names, list) else None)
        if found:
            return f"its accept/reject rule is malformed: {found}"
    pre = checkpoint.get("preprocessing")
    found = None if pre is None else preprocessing_problem(pre)
    trained = data.get("image_size")
    # The preprocessing is made from the data's image size: another one is no training's.
    if not found and isinstance(pre, dict) and trained not in (None, pre["image_size"]):
        found = f"its preprocessing image_size {pre['image_size']} is not its data's {trained}"
    return found or _training_state_problem(checkpoint)


def _training_state_problem(checkpoint: dict[str, Any]) -> str | None:
    """What a resumed ``fit`` would take from ``checkpoint`` and cannot use: the data seed,
    the random generators' states, NaN or infinity in the optimizer's state or the schedule."""
    from classifier import resume

    data = checkpoint.get("datamodule_hyper_parameters", {})
    state = checkpoint.get("ImageFolderDataModule")
    state = state if isinstance(state, dict) else {}
    for value in (data.get("seed"), state.get("seed")):
        found = seed_problem(value)
        if found:
            return found
    for states in (state.get("rng_states"), checkpoint.get("rng_states")):
        found = None if states is None else resume.states_problem(states)
        if found:
            return found
    if not _finite_leaves(checkpoint.get("optimizer_states", [])):
        return "its optimizer state holds NaN, infinite or non-dense values"
    if not _finite_leaves(checkpoint.get("lr_schedulers", [])):
        return "its learning-rate schedule holds NaN or infinite values"
    return None


def _finite_leaves(tree: object) -> bool:
    """Whether every number and floating-point tensor in ``tree`` is finite (and dense)."""
    if isinstance(tree, torch.Tensor):
        if tree.layout != torch.strided:
            return False
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, float):
        return math.isfinite(tree)
    if isinstance(tree, dict):
        return all(_finite_leaves(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_finite_leaves(v) for v in tree)
    return True


def _selective_problem(stored: object, classes: int | None) -> str | None:
    """What is wrong with ``stored``, as ``Selector.to_checkpoint`` writes it for ``classes``
    classes (``None``: unknown). Its width is checked against the network where the rule is
    attached to one (:func:`~classifier.checkpoint.rule_of`)."""
    if not isinstance(stored, dict):
        return "it is not a mapping"
    found = rule_problem(stored)
    if found:
        return found
    means, precision = stored.get("means"), stored.get("precision")
    if not (_dense_floats(means) and _dense_floats(precision)):
        return "its means and precision are not dense real tensors"
    assert isinstance(means, torch.Tensor) and isinstance(precision, torch.Tensor)
    rows = means.shape[0] if classes is None and means.ndim else classes
    found = statistics_problem(means.shape, precision.shape, rows or 0)
    if found:
        return found
    if not bool(torch.isfinite(means).all() and torch.isfinite(precision).all()):
        return "its means or precision hold NaN or infinite values"
    # The distance of a few class means to the nearest mean (0): finite, or every distance
    # overflows and every prediction is rejected (a precision of 3e38 did that).
    from classifier.selective import Distance

    if not bool(torch.isfinite(Distance(means, precision)(means[:8])).all()):
        return "its distances overflow (means or precision too large)"
    return None


def _dense_floats(value: object) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.is_floating_point()
    )


class SafeCheckpointIO(CheckpointIO):
    """Loads through :func:`~classifier.checkpoint.load_checkpoint`; writes every file
    atomically; writes one file where two callbacks save the same training state.

    Every ``classifier`` command puts it under the trainer (wrapping a checkpoint plugin the
    config chose). Name it in the config to write in the background::

        trainer:
          plugins:
            - class_path: classifier.SafeCheckpointIO
              init_args: {asynchronous: true}

    Loading: ``weights_only`` and ``map_location`` requests are ignored; loads are always
    weights-only, onto the CPU, after any write in flight has finished.

    Saving (local files): ``torch.save`` into an exclusively created temporary file in the
    target folder, synced to disk, then renamed over the target, so a file is never
    half-written, not even on SIGKILL. When a save has exactly the training state and contents
    of the previous one (same keys, epoch, step and loop progress: ``best.ckpt`` and
    ``last.ckpt`` after one validation) the file is hard-linked (or copied) instead of written
    twice; a later write replaces the link, never the shared file. Remote paths and custom
    plugins write through the wrapped plugin.

    Args:
        inner: the plugin for remote paths and custom storage (default: Lightning's).
        asynchronous: write on a background thread from a CPU copy of the tensors taken at
            the save (training goes on meanwhile; at most one more copy waits while a write
            runs, and none is kept once written). Lightning's teardown (end of a run, SIGTERM,
            Ctrl-C, an error) and every load wait for the writes.
    """

    def __init__(self, inner: CheckpointIO | None = None, asynchronous: bool = False) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()
        self.asynchronous = asynchronous
        #: Lightning's plain writer is replaced by ours (atomic in the target folder, links).
        self.own_writes = type(self.inner) is TorchCheckpointIO
        self._executor: ThreadPoolExecutor | None = None
        self._error: BaseException | None = None
        #: (training-state key, path) of the last checkpoint saved.
        self._last: tuple[str, str] | None = None

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` (or link the identical previous one)."""
        self._raise_error()
        target = str(path)
        local = self.own_writes and "://" not in target
        key = _state_key(checkpoint) if local else ""
        previous, self._last = self._last, ((key, target) if key else None)
        if key and previous and previous[0] == key and previous[1] != target:
            self._submit(_link_or_copy, previous[1], target)
        elif not local:
            self._submit(self.inner.save_checkpoint, checkpoint, path, storage_options)
        elif self.asynchronous:
            self.wait_for_writes()  # at most one snapshot waits while another is written
            snapshot = apply_to_collection(checkpoint, torch.Tensor, _snapshot)
            self._submit(save_file, snapshot, target)
        else:
            save_file(checkpoint, target)

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with :func:`~classifier.checkpoint.load_checkpoint` (never the full unpickler)."""
        self.wait()
        return load_checkpoint(path)

    @override
    def remove_checkpoint(self, path: Any) -> None:
        """Remove a checkpoint file, after the writes queued before. Only a regular file (or a
        link) ending in ``.ckpt`` is removed, never a folder (Lightning's own removal is
        recursive, and the path may have come from a checkpoint's callback state)."""
        target = str(path)
        if "://" in target:
            self._submit(self.inner.remove_checkpoint, path)
            return
        self._submit(_remove_file, target)

    def forget(self, path: str) -> None:
        """Never link a later save to ``path`` (its file was changed outside this writer)."""
        if self._last is not None and os.path.abspath(self._last[1]) == os.path.abspath(path):
            self._last = None

    def wait(self) -> None:
        """Block until every queued write is done; raise the first write error."""
        self.wait_for_writes()
        self._raise_error()

    def wait_for_writes(self) -> None:
        """Block until every queued write is done (errors wait for the next call)."""
        if self._executor is not None:
            self._executor.submit(lambda: None).result()

    @override
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
        """Raise a failed write's error; while another exception is being handled (SIGTERM,
        Ctrl-C), warn instead, so that one still decides how the run ends."""
        error, self._error = self._error, None
        if error is None:
            return
        if sys.exc_info()[0] is not None:
            warnings.warn(f"a checkpoint write failed: {error!r}", stacklevel=3)
            return
        raise error


def _remove_file(path: str) -> None:
    """Unlink ``path`` if it is a ``.ckpt`` file or link; anything else stays (with a warning)."""
    try:
        kind = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not path.endswith(".ckpt") or not (stat.S_ISREG(kind) or stat.S_ISLNK(kind)):
        warnings.warn(f"not removing {path}: not a checkpoint file", stacklevel=2)
        return
    os.unlink(path)


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """A point-in-time copy in CPU memory (GPU memory is not held by queued writes)."""
    return tensor.detach().to("cpu", copy=True)


def _state_key(checkpoint: dict[str, Any]) -> str:
    """What identifies a checkpoint's contents and training state (empty: never linked)."""
    if "loops" not in checkpoint or "global_step" not in checkpoint:
        return ""
    state = (sorted(checkpoint), checkpoint.get("epoch"), checkpoint["global_step"])
    return repr((*state, checkpoint["loops"]))


def save_file(checkpoint: dict[str, Any], target: str | Path) -> None:
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


def read_checkpoint(trainer: Any, path: str) -> dict[str, Any]:
    """A checkpoint this run saved at ``path``, once the writes queued so far are on disk."""
    if (io := _writer(trainer)) is not None:
        io.wait()
    return load_checkpoint(path)


def amend_checkpoint(
    trainer: Any,
    path: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    loaded: dict[str, Any] | None = None,
) -> None:
    """Rewrite the checkpoint at ``path`` (``loaded``: as already read) with ``change`` applied
    (atomically, at once). A file it shared with a twin (``last.ckpt`` linked to ``best.ckpt``)
    is replaced, not changed: the twin keeps its contents, and no later save is linked to the
    amended file."""
    amended = change(loaded if loaded is not None else read_checkpoint(trainer, path))
    if (io := _writer(trainer)) is not None:
        io.forget(path)
        if not io.own_writes or "://" in path:
            io.inner.save_checkpoint(amended, path)
            return
    save_file(amended, path)


class CheckpointError(UserError, ValueError):
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
            if first.startswith("Weights only load failed"):  # torch's advice would unpickle
                raise CheckpointError(
                    f"cannot load checkpoint {file}: it holds pickled objects other than "
                    "tensors, which could run code when loaded; classifier never loads them."
                ) from None
            raise CheckpointError(
                f"cannot load checkpoint {file}: {first} (truncated file, or not a classifier "
                "checkpoint; pickled objects other than tensors are refused)."
            ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{file} is not a Lightning checkpoint.")
    upgrade(checkpoint, file, source=file)
    return checkpoint


def upgrade(
    checkpoint: dict[str, Any], path: str | Path = "checkpoint", source: str | Path | None = None
) -> None:
    """Check what a loaded checkpoint holds (every loading route calls this) and bring what
    older versions stored up to date: the generator states were top-level and now belong to
    the data module's state (exact resume); the temperature was a buffer in the weights (and
    absent before calibration) and is now ``checkpoint["temperature"]``.

    Args:
        checkpoint: The loaded checkpoint, changed in place.
        path: How to name it in an error.
        source: The file it was read from: ``ModelCheckpoint`` paths of ``.ckpt`` files beside
            it are kept, every other path is blanked (``None``: all are blanked).

    Raises:
        CheckpointError: a part classifier reads has the wrong type or an absurd value.
    """
    found = problem(checkpoint)
    if found:
        raise CheckpointError(f"{path}: {found}; not a classifier checkpoint, or a damaged one.")
    beside = os.path.dirname(os.path.realpath(source)) if source is not None else None
    forget_checkpoint_paths(checkpoint, beside)
    legacy = checkpoint.pop("rng_states", None)
    if legacy is not None:
        checkpoint.setdefault("ImageFolderDataModule", {}).setdefault("rng_states", legacy)
    for states in ("state_dict", "current_model_state"):  # EMA keeps the raw weights apart
        if isinstance(checkpoint.get(states), dict):
            buffer = checkpoint[states].pop("temperature", None)
            if states == "state_dict" and isinstance(buffer, torch.Tensor):
                checkpoint.setdefault("temperature", float(buffer))
    checkpoint.setdefault("temperature", 1.0)


def rule_of(
    checkpoint: dict[str, Any], net: nn.Module, path: object = "checkpoint"
) -> Selector | None:
    """The accept/reject rule stored in ``checkpoint`` (checked by :func:`~classifier.
    checkpoint.upgrade`), for ``net``; ``None`` without one.

    Raises:
        CheckpointError: its class means are not as wide as ``net``'s features.
    """
    from classifier.selective import Selector, feature_width

    stored = checkpoint.get("selective")
    if stored is None:
        return None
    width, means = feature_width(net), stored["means"]
    if width is not None and means.shape[-1] != width:
        raise CheckpointError(
            f"{path}: its accept/reject rule has class means of width {means.shape[-1]} for a "
            f"network with {width} features; a damaged checkpoint."
        )
    return Selector.from_checkpoint(stored)


class SafeLoading(pl.LightningModule):
    """``load_from_checkpoint`` through :func:`load_checkpoint`'s rules (for the model)."""

    @override
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's loader restricted to local files and ``weights_only=True`` (a
        ``weights_only`` argument is ignored: a checkpoint never runs code)."""
        loaded: Self = super().load_from_checkpoint(
            checkpoint_file(checkpoint_path),
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=True,
            **kwargs,
        )
        return loaded
