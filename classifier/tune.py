"""Finding the batch size and learning rate before training, with Lightning's ``Tuner``.

The finders run on a scratch trainer (one device, no logger, no callbacks, files in a temporary
folder), so none of the run's callbacks fire and nothing of the search lands in the run folder
except ``lr_finder.png``; the data module is told (``datamodule.finders()``) that these fits are
the finders', so its data health check and reports wait for the real fit. The values found
replace the configured ones, and ``classifier fit`` records them in ``config.yaml``, so the run
reproduces without the finder.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.tuner.tuning import Tuner

from classifier.errors import UserError
from classifier.figures import draw


class TuneError(UserError, ValueError):
    """The finders cannot run with these settings; the message says what to change."""


@dataclass(frozen=True)
class Found:
    """What the finders chose (``None``: not searched)."""

    batch_size: int | None = None
    lr: float | None = None


def _scratch_trainer(trainer: pl.Trainer, folder: str) -> pl.Trainer:
    device = trainer.strategy.root_device
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=trainer.precision,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        default_root_dir=folder,
        max_epochs=-1,  # the finders bound their runs by steps
    )


def find(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: Any,
    batch_size: bool,
    lr: bool,
    folder: Path,
) -> Found:
    """Scale the batch size (doubling until memory or the dataset runs out), then find the
    learning rate for it; both are set on ``datamodule`` and ``model``. The LR curve goes to
    ``folder/lr_finder.png``."""
    if trainer.world_size > 1:
        raise TuneError(
            "the finders run on one device: tune with --trainer.devices 1, then train on "
            "several with the values it records in config.yaml."
        )
    found_size, found_lr = None, None
    # The data module leaves its data health check and run-folder reports to the real fit,
    # and forgets the finders' checkpoint restores (they must not decide its random draws).
    with tempfile.TemporaryDirectory(prefix="classifier-tune-") as scratch, datamodule.finders():
        tuner = Tuner(_scratch_trainer(trainer, scratch))
        if batch_size:
            found_size = tuner.scale_batch_size(model, datamodule=datamodule, mode="power")
            if found_size is not None:
                datamodule.hparams["batch_size"] = found_size
                if datamodule.hparams.get("eval_batch_size") is None:
                    datamodule.eval_batch_size = 2 * found_size
        if lr:
            finder = tuner.lr_find(model, datamodule=datamodule)
            found_lr = finder.suggestion() if finder is not None else None
            if finder is not None:
                _plot(finder.results, found_lr, folder / "lr_finder.png")
    return Found(found_size, found_lr)


def _plot(results: dict[str, list[float]], suggestion: float | None, path: Path) -> None:
    lrs, losses = [float(v) for v in results["lr"]], [float(v) for v in results["loss"]]
    draw("lr_finder", path, lrs, losses, None if suggestion is None else float(suggestion))
