"""A callback that measures training throughput inside a real ``classifier fit`` run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.startup import record_startup


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class Throughput(Callback):
    """Images/s over training steps after ``warmup_steps``, the fraction of wall time spent
    waiting for the next batch, and peak GPU memory; written to ``$BENCH_OUT`` as JSON.

    On a GPU it also counts the host-device synchronisations of the measured steps with
    ``torch.cuda.set_sync_debug_mode`` (every ``.item()``, ``.cpu()``, ``bool(tensor)``), as
    ``syncs_per_step``: log intervals and the loader's pinned copies should be all there is.

    Args:
        warmup_steps: steps excluded from the measurement (compilation, cudnn autotuning).
    """

    def __init__(self, warmup_steps: int = 20) -> None:
        self.warmup_steps = warmup_steps
        self.syncs = 0
        self._showwarning: Any = None
        self.steps = 0
        self.images = 0
        self.wait = 0.0
        self.start: float | None = None
        self.last_end: float | None = None
        self.train_time = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_end = None  # validation between epochs is not data wait

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self.steps == self.warmup_steps and self.start is None:
            _sync(pl_module)
            self.start = now = time.perf_counter()
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
                self._count_syncs()
        if self.start is not None and self.last_end is not None:
            self.wait += now - self.last_end
        self._batch_start = now

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.steps += 1
        now = time.perf_counter()
        if self.start is not None:
            self.images += len(batch[0])
            self.train_time += now - self._batch_start
            self.last_end = now

    def _count_syncs(self) -> None:
        import warnings

        self._showwarning = warnings.showwarning

        def show(message: Any, *args: Any, **kwargs: Any) -> None:
            if "synchroniz" in str(message):
                self.syncs += 1
            else:
                self._showwarning(message, *args, **kwargs)

        warnings.showwarning = show
        warnings.filterwarnings("always", message=".*synchroniz.*")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._showwarning is not None:
            import warnings

            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = self._showwarning
        _sync(pl_module)
        busy = self.train_time + self.wait
        result = {
            "images_per_s": self.images / busy if busy else 0.0,
            "data_wait_fraction": self.wait / busy if busy else 0.0,
            "measured_steps": self.steps - self.warmup_steps,
            "syncs_per_step": self.syncs / max(1, self.steps - self.warmup_steps),
            "peak_memory_gib": (
                torch.cuda.max_memory_allocated(pl_module.device) / 2**30
                if pl_module.device.type == "cuda"
                else None
            ),
            "device": torch.cuda.get_device_name() if pl_module.device.type == "cuda" else "cpu",
        }
        out = os.environ.get("BENCH_OUT")
        if out and trainer.is_global_zero:
            Path(out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result))


class FirstStep(Callback):
    """Record the time from process start to the first training step (``$BENCH_STARTUP``):
    imports, config parsing, data scan, model set-up and the sanity check."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        record_startup()


class Timeline(Callback):
    """Print the seconds since process start at each phase of ``fit`` (stderr), to see where a
    whole command's time goes: start-up, sanity check, each epoch's training and validation,
    the end-of-fit work, and (through ``atexit``) the process exit."""

    def _mark(self, what: str) -> None:
        import sys

        from benchmarks.startup import since_process_start

        print(f"[timeline] {since_process_start():7.2f} s  {what}", file=sys.stderr, flush=True)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import atexit

        self._mark(f"setup {stage}")
        atexit.register(self._mark, "exit")

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("sanity start")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("train start")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(f"epoch {trainer.current_epoch} start")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self._mark("  first batch")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("  validation start")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("  validation end")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark(f"epoch {trainer.current_epoch} end")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("train end")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("fit end")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._mark(f"teardown {stage}")
