"""Reading checkpoints, safely, through one function.

Every checkpoint this process reads goes through :func:`load_checkpoint`: the command line's
``--ckpt_path`` on every subcommand (whether typed, set in a YAML config or resolved from
``last``), the test after fit, ONNX export and ``ImageClassifier.load_from_checkpoint``.
It reads only a local regular file, always with ``torch.load(weights_only=True)``, so a pickled
payload in a checkpoint is refused instead of run.
:class:`~classifier.checkpoint_io.SafeCheckpointIO` puts it under the trainer: Lightning's own
loader would otherwise unpickle ``http(s)://`` checkpoints and any checkpoint given
``weights_only=False`` with the full (code-running) unpickler.

``classifier test|validate|predict --ckpt_path X`` needs no ``--config``: the model and data
arguments stored in the checkpoint become the first config layer, under any ``--config`` and
command-line overrides the user gives.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier.checkpoint_contents import forget_checkpoint_paths, problem
from classifier.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from classifier.selective import Selector


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
