"""Exact resume of the training data: the loader that skips what a checkpoint consumed,
restores the random generators and never draws a stale epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from typing_extensions import override

from classifier import rng
from classifier.sampler import EpochSampler


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
        before_epoch: called with the epoch about to start, before its first batch (the data
            health check completes there once the first epoch is over).
    """

    def __init__(
        self,
        sampler: EpochSampler,
        batch_size: int,
        progress: Callable[[], int],
        epoch: Callable[[], int],
        rng_states: dict[str, Any] | None = None,
        before_epoch: Callable[[int], None] | None = None,
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.progress = progress
        self.epoch = epoch
        self._rng_states = rng_states
        self.before_epoch = before_epoch

    def begin(self) -> None:
        """Before an iterator's first batch: point the sampler at the epoch the trainer runs
        next (unless a resume pinned one), call ``before_epoch`` with it and restore the
        checkpoint's generator states (once)."""
        sampler = self.sampler
        if sampler.resume_at is None:
            sampler.set_epoch(self.epoch())
        if self.before_epoch is not None:  # every process, before the epoch's first batch
            self.before_epoch(sampler.resume_at[0] if sampler.resume_at else sampler.epoch)
        if self._rng_states is not None:
            rng.restore(self._rng_states)
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
