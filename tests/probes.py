"""Callbacks that tests add with ``--trainer.callbacks+=tests.probes.X`` to look inside a run."""

from __future__ import annotations

import threading
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from classifier.ema import EMA


def averaged_state(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """The EMA's averaged weights as it saves them (through its public ``on_save_checkpoint``,
    which puts them in ``state_dict``), by the model's own names; the tensors, not copies."""
    ema = next(c for c in trainer.callbacks if isinstance(c, EMA))  # type: ignore[attr-defined]
    checkpoint: dict[str, Any] = {"state_dict": pl_module.state_dict()}
    ema.on_save_checkpoint(trainer, pl_module, checkpoint)
    assert "current_model_state" in checkpoint, "the EMA holds no average"
    return checkpoint["state_dict"]  # type: ignore[no-any-return]


class StateProbe(Callback):
    """Snapshot raw and EMA weights when training (re)starts."""

    def __init__(self) -> None:
        self.raw: dict[str, torch.Tensor] = {}
        self.ema: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raw = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.ema = {k: v.clone() for k, v in averaged_state(trainer, pl_module).items()}


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


#: Tensor methods that copy a value to the host (a device sync on a GPU).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class HostReads(Callback):
    """Record tensor reads to the host per training batch, from the start of one batch to the
    start of the next (step, backward, optimizer, every callback, logging, the next fetch).

    Two kinds of reads are host-side by design and not recorded: the optimizer's step counters
    (CPU tensors in torch.optim) and the bar value the model logs as a CPU scalar (Lightning
    converts progress-bar values to floats after every batch). Listed last, so the window opens
    after the other callbacks' ``on_train_batch_start``.
    """

    def __init__(self) -> None:
        self.reads: dict[tuple[int, int], list[str]] = {}
        self._key: tuple[int, int] | None = None
        self._saved: dict[str, Any] = {}
        self._trainer: pl.Trainer | None = None

    def _host_side(self, tensor: torch.Tensor) -> bool:
        trainer = self._trainer
        if trainer is None or tensor.device.type != "cpu":
            return False
        for optimizer in trainer.optimizers:
            if any(tensor is state.get("step") for state in optimizer.state.values()):
                return True
        # Lightning reads a detached view of the logged value: compare storage, not objects.
        results = trainer._results or {}
        return any(
            isinstance(item._forward_cache, torch.Tensor)
            and tensor.data_ptr() == item._forward_cache.data_ptr()
            and item.meta.prog_bar
            and not item.meta.logger
            for item in results.values()
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import traceback

        self._trainer = trainer

        def counting(name: str, method: Any) -> Any:
            def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                # The figure thread draws from CPU copies: not a read on the training thread.
                on_training_thread = threading.current_thread() is threading.main_thread()
                if self._key is not None and on_training_thread and not self._host_side(tensor):
                    stack = traceback.extract_stack(limit=6)[:-1]
                    self.reads[self._key].append(
                        f"{name} at " + " < ".join(f"{f.filename}:{f.lineno}" for f in stack[::-1])
                    )
                return method(tensor, *args, **kwargs)

            return read

        for name in HOST_READS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, counting(name, self._saved[name]))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._key = (trainer.current_epoch, batch_idx)
        self.reads[self._key] = []

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._key = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._key = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._key, self._trainer = None, None
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        self._saved = {}


class RunFiles(Callback):
    """Record which files the run folder holds when each training epoch starts."""

    def __init__(self) -> None:
        self.at_epoch_start: dict[int, set[str]] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from classifier.file_io import run_dir

        folder = run_dir(trainer)
        files = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        self.at_epoch_start[trainer.current_epoch] = files


class LeaveOpen(Callback):
    """Write to a file at the end of fit, test or predict and never close it (a careless user
    callback)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.handle: Any = None

    def _leave(self, stage: str) -> None:
        self.handle = open(self.path, "w")  # noqa: SIM115 (left open on purpose)
        self.handle.write(f"written at {stage} end")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave("fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave("test")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave("predict")


class EmaTrace(Callback):
    """Record, after every training batch, one raw and one averaged weight tensor and the
    global step (listed after ``classifier.EMA``, so it sees each update's result)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        name, parameter = next(iter(pl_module.named_parameters()))
        raw = parameter.detach().clone()
        averaged = averaged_state(trainer, pl_module)[name].clone()
        self.steps.append((trainer.global_step, raw, averaged))


class SpawnChild(Callback):
    """Start one ``spawn``-method child process at fit start, as a spawn-method loader worker
    or a user's helper would, and wait for it."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=_nothing)
        child.start()
        child.join(timeout=120)


def _nothing() -> None:
    """What the spawned child runs (after importing this module: tests.probes)."""
