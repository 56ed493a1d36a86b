"""``Slices``: metrics per attribute value of the evaluated rows (JSONL ``metadata``, extra CSV
columns), in ``slices_val.csv`` (fit's last validation, ``validate``) and ``slices_test.csv``,
and in ``report.html``'s *Slices* section (:mod:`classifier.slice_metrics`)."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier.contract import classifier_module, optional_image_data, rows_of
from classifier.dist import gather_batches
from classifier.files import run_dir
from classifier.slice_metrics import Predictions, left_out_note, table, warning, write


class Slices(Callback):
    """Count, top-1, balanced accuracy and ECE (once ``Calibration`` fitted a temperature) of
    each value of each attribute of the validation and test rows, worst top-1 first, written as
    ``slices_<split>.csv`` in the run folder. Data without attributes (class folders) writes
    nothing.

    A slice of ``min_images`` or more whose top-1 is more than ``margin`` below the split's is
    marked in the file and the report and named in a warning (for fit: once, after its last
    validation).

    Args:
        min_images: smallest slice that is warned about (smaller ones are only shown).
        margin: how far (as a fraction, 0.1 = 10 points) below the split's top-1 a slice must
            fall to be warned about.
    """

    def __init__(self, min_images: int = 20, margin: float = 0.1) -> None:
        self.min_images = min_images
        self.margin = margin
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self._pending: str | None = None
        self._active = False

    def _start(self, trainer: pl.Trainer, split: str) -> None:
        """Collect only when the split's rows carry attributes (the same on every process)."""
        self._batches = []
        data = optional_image_data(trainer)
        self._active = data is not None and rows_of(data, split) is not None

    def _keep(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        if not self._active:
            return
        if isinstance(outputs, dict) and "logits" in outputs and "indices" in outputs:
            temperature = classifier_module(pl_module).temperature
            probs = (outputs["logits"].float() / temperature).softmax(dim=1)
            confidence, predicted = probs.max(dim=1)
            self._batches.append(
                (outputs["indices"].cpu(), batch[1].cpu(), predicted.cpu(), confidence.cpu())
            )

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if not self._active:
            return
        found, self._batches = gather_batches(self._batches), []
        rowed = rows_of(optional_image_data(trainer), split)
        if found is None or rowed is None or not trainer.is_global_zero:
            return
        indices, labels, predicted, confidence = (t.numpy() for t in found)
        index, first = np.unique(indices, return_index=True)  # each image once, in split order
        attributes = [rowed[1][int(i)] for i in index]
        model = classifier_module(pl_module)
        calibrated = model.temperature != 1.0 or model.selector is not None
        predictions = Predictions(labels[first], predicted[first], confidence[first])
        rows, overall, left_out = table(
            predictions, attributes, calibrated, self.min_images, self.margin
        )
        notes = [warning(split, rows, overall, self.margin), left_out_note(split, left_out)]
        message = "\n".join(n for n in notes if n) or None
        if rows:
            write(run_dir(trainer) / f"slices_{split}.csv", rows)
        if trainer.state.fn == "fit":
            self._pending = message
        elif message:
            warnings.warn(message, stacklevel=2)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the epoch's predictions."""
        self._start(trainer, "val")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's predictions (not during the sanity check)."""
        if not trainer.sanity_checking:
            self._keep(pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``slices_val.csv`` (each epoch of fit replaces the last)."""
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn about the slices of fit's last validation."""
        if self._pending:
            warnings.warn(self._pending, stacklevel=2)
        self._pending = None

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the test predictions."""
        self._start(trainer, "test")

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's predictions."""
        self._keep(pl_module, outputs, batch)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``slices_test.csv``."""
        self._finish(trainer, pl_module, "test")
