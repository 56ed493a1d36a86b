"""Callbacks that tests add with ``--trainer.callbacks+=tests.probes.X`` to look inside a run."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from classifier.ema import EMA


class StateProbe(Callback):
    """Snapshot raw and EMA weights when training (re)starts."""

    def __init__(self) -> None:
        self.raw: dict[str, torch.Tensor] = {}
        self.ema: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raw = {k: v.clone() for k, v in pl_module.state_dict().items()}
        ema = next(c for c in trainer.callbacks if isinstance(c, EMA))  # type: ignore[attr-defined]
        assert ema._average_model is not None
        self.ema = {k: v.clone() for k, v in ema._average_model.module.state_dict().items()}


def probe(cli: Any) -> StateProbe:
    """The StateProbe of a finished CLI run."""
    return next(c for c in cli.trainer.callbacks if isinstance(c, StateProbe))


class KillAt(Callback):
    """SIGKILL this process at a given epoch and batch: a pre-empted node, no clean-up."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        import os
        import signal

        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class TermAt(KillAt):
    """Send this process SIGTERM (a scheduler's pre-emption notice) at an epoch and batch."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        import os
        import signal

        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)
