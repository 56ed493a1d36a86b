"""Exact resume of the training data: the loader that skips what a checkpoint consumed,
restores the random generators and never draws a stale epoch.

Saving and restoring every random number generator, for bitwise-exact resume.

Lightning does not checkpoint RNG states; dropout, drop-path and MixUp draw from them in the
training process, so a resumed run diverges unless they are restored. States are stored as
tensors and plain tuples so checkpoints still load with ``weights_only=True``.

Saving a checkpoint when the process is told to stop (SIGTERM: pre-emption, ``scancel``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader
from typing_extensions import override

from classifier.file_io import run_dir
from classifier.sampler import EpochSampler


def capture() -> dict[str, Any]:
    """The current states of Python's, NumPy's, torch's CPU and CUDA generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(kind),
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture`."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def states_problem(states: object) -> str | None:
    """Why ``states`` cannot be restored (``None``: they can), found by restoring them and
    putting the current states back, so a damaged checkpoint is refused when it is loaded, not
    when training is about to continue."""
    if not isinstance(states, dict):
        return "its random generator states are not a mapping"
    current = capture()
    try:
        restore(states)
    except Exception as error:  # whatever the generators refuse
        return f"its random generator states cannot be restored ({type(error).__name__})"
    finally:
        restore(current)
    return None


class EpochResume:
    """Exact resume of a training loader over an :class:`EpochSampler` (the CPU path's
    :class:`ResumableLoader` and DALI's training loader both delegate to it).

    Its state (saved by Lightning in checkpoints written inside an epoch) holds the epoch and
    how many of this rank's samples it consumed; resuming skips exactly those, so no sample is
    replayed or skipped. The random generators' states of the checkpoint (dropout, drop-path
    and MixUp draw from them; the data module carries them, because Lightning keeps loader
    states only for unfinished epochs) are restored when the loader's first iterator is created,
    right before training continues. Each iterator draws the epoch Lightning is about to run, so
    an iterator created before ``set_epoch`` (Lightning creates the first one early) is never
    stale.

    Args:
        sampler: the training sampler.
        batch_size: samples per batch.
        progress: batches of the current epoch already consumed.
        epoch: the epoch the trainer runs next.
        rng_states: generator states to restore before the first iteration (a resumed run).
    """

    def __init__(
        self,
        sampler: EpochSampler,
        batch_size: int,
        progress: Callable[[], int],
        epoch: Callable[[], int],
        rng_states: dict[str, Any] | None = None,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.progress = progress
        self.epoch = epoch
        self._rng_states = rng_states

    def begin(self) -> None:
        """Before an iterator's first batch: point the sampler at the epoch the trainer runs
        next (unless a resume pinned one) and restore the checkpoint's generator states
        (once)."""
        sampler = self.sampler
        if sampler.resume_at is None:
            sampler.set_epoch(self.epoch())
        if self._rng_states is not None:
            restore(self._rng_states)
            self._rng_states = None

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of this rank's samples already trained on."""
        return {"epoch": self.sampler.epoch, "samples": self.progress() * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the consumed samples if the run resumes inside the same epoch."""
        self.sampler.resume(int(state["epoch"]), int(state["samples"]))


class ResumableLoader(DataLoader[Any]):
    """Training loader that owns exact resume (see :class:`EpochResume`).

    Args:
        resume: the epoch, progress and generator states to resume from.
        **kwargs: as ``DataLoader``; its sampler is ``resume.sampler``.
    """

    def __init__(self, *, resume: EpochResume, **kwargs: Any) -> None:
        super().__init__(sampler=resume.sampler, **kwargs)
        self.resume = resume

    @override
    def __iter__(self) -> Any:
        self.resume.begin()
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of this rank's samples already trained on."""
        return self.resume.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the consumed samples if the run resumes inside the same epoch."""
        self.resume.load_state_dict(state)


def consumed_batches(trainer: pl.Trainer | None) -> int:
    """Batches of the current training epoch already consumed."""
    if trainer is None:
        return 0
    current: Any = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(current.processed)


def next_epoch(trainer: pl.Trainer | None) -> int:
    """The epoch the trainer runs next (what Lightning passes to ``set_epoch``)."""
    if trainer is None:
        return 0
    current: Any = trainer.fit_loop.epoch_progress.current
    return int(current.processed)


#: The exit status of a process stopped by SIGTERM (128 + 15), which schedulers expect.
SIGTERM_EXIT_CODE = 143


class PreemptionCheckpoint(Callback):
    """On SIGTERM, write ``checkpoints/last.ckpt`` at the current step, then let the run stop.

    Lightning stops after the current batch when it receives SIGTERM but saves nothing and
    exits 0; with this callback (added by ``classifier fit`` automatically) the run resumes
    with ``--ckpt_path last`` from the exact step, and ``classifier`` exits 143.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Save on SIGTERM (every rank takes part; rank 0 writes)."""
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None) or run_dir(trainer) / "checkpoints"
        self.path = Path(folder) / "last.ckpt"
        trainer.save_checkpoint(self.path)
        rank_zero_info(f"SIGTERM: saved {self.path}; resume with --ckpt_path last")
