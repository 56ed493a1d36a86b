"""``PerClassReport``: support, precision, recall, F1 and AUROC of every class, as CSV."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier.contract import classifier_module
from classifier.files import run_dir
from classifier.metrics import write_per_class_csv


class PerClassReport(Callback):
    """Write ``val_per_class.csv`` after every validation and ``test_per_class.csv`` after
    test: support, predicted count, accuracy (= recall), precision, recall, F1 and one-vs-rest
    AUROC per class,
    from the counts the model accumulated (synchronised across processes).

    ``classifier`` adds this callback to ``fit``, ``validate`` and ``test`` when the config
    has none.
    """

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``val_per_class.csv`` (not for sanity-check batches)."""
        if not trainer.sanity_checking:
            self._write(trainer, pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``test_per_class.csv``."""
        self._write(trainer, pl_module, "test")

    @staticmethod
    def _write(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module = classifier_module(pl_module)
        metrics = module.stage_metrics(stage)
        confmat = metrics.confmat.compute()  # every rank takes part
        auroc = metrics.auroc.compute()
        if trainer.is_global_zero:
            path = run_dir(trainer) / f"{stage}_per_class.csv"
            write_per_class_csv(path, confmat, list(module.class_names), auroc)
