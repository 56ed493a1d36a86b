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


class ResumableLoader(DataLoader[Any]):
    """Training loader that owns exact resume.

    Its state (saved by Lightning in checkpoints written inside an epoch) holds the epoch and
    how many of this rank's samples it consumed; resuming skips exactly those, so no sample is
    replayed or skipped. The random generators' states of the checkpoint (dropout, drop-path
    and MixUp draw from them; the data module carries them, because Lightning keeps loader
    states only for unfinished epochs) are restored when its first iterator is created, right
    before training continues. Each iterator draws the epoch Lightning is about to run, so an
    iterator created before ``set_epoch`` (Lightning creates the first one early) is never stale.

    Args:
        progress: batches of the current epoch already consumed.
        epoch: the epoch the trainer runs next.
        rng_states: generator states to restore before the first iteration (a resumed run).
        before_epoch: called with the epoch about to start, before its first batch (the data
            health check completes there once the first epoch is over).
    """

    def __init__(
        self,
        *args: Any,
        progress: Callable[[], int],
        epoch: Callable[[], int],
        rng_states: dict[str, Any] | None = None,
        before_epoch: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        self.epoch = epoch
        self._rng_states = rng_states
        self.before_epoch = before_epoch

    def _epoch_sampler(self) -> EpochSampler:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        return sampler

    @override
    def __iter__(self) -> Any:
        begin_epoch(self._epoch_sampler(), self.epoch, self.before_epoch)
        if self._rng_states is not None:
            rng.restore(self._rng_states)
            self._rng_states = None
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of this rank's samples already trained on."""
        assert self.batch_size is not None
        return {"epoch": self._epoch_sampler().epoch, "samples": self.progress() * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the consumed samples if the run resumes inside the same epoch."""
        self._epoch_sampler().resume(int(state["epoch"]), int(state["samples"]))


def begin_epoch(
    sampler: EpochSampler,
    epoch: Callable[[], int],
    before_epoch: Callable[[int], None] | None = None,
) -> None:
    """Point ``sampler`` at the epoch the trainer runs next (unless a resume pinned one) and
    call ``before_epoch`` with it: what a training loader does before its first batch."""
    if sampler.resume_at is None:
        sampler.set_epoch(epoch())
    if before_epoch is not None:  # every process, before the epoch's first batch
        before_epoch(sampler.resume_at[0] if sampler.resume_at else sampler.epoch)


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
