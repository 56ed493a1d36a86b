"""Saving a checkpoint when the process is told to stop (SIGTERM: pre-emption, ``scancel``)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from classifier.files import run_dir

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
