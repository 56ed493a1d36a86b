"""``SampleGrids``: augmented training images, and a top-losses gallery of validation images."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier.callback_contract import ImageData, classifier_module, image_data
from classifier.dist import gather_objects
from classifier.figures import (
    PLOT_TIME_SHARE,
    PlottingCallback,
    as_uint8,
    epoch_due,
    log_image,
    picture_grid,
    save_png,
    submit_figure,
)
from classifier.file_io import run_dir
from classifier.metrics import hardness
from classifier.transforms import denormalize


def _save_grid(
    trainer: pl.Trainer,
    images: list[torch.Tensor],
    captions: list[str],
    colours: list[str],
    title: str,
    path: Path,
    step: int,
) -> None:
    """Draw and write one grid (``3xHxW`` images, uint8 or float in [0, 1]) and send it to the
    loggers (on the figure thread)."""
    pictures = [as_uint8(image) for image in images]
    save_png(picture_grid(pictures, captions, colours, title), path)
    gallery = path.name == "val_predictions.png"  # the report shows the highest-loss images
    alt = "highest-loss validation images" if gallery else ""
    log_image(trainer, f"samples/{path.stem}", path, step, "gallery" if gallery else "", alt)


class SampleGrids(PlottingCallback):
    """Write ``train_batch.png`` (augmented training images, once at the first step) and
    ``val_predictions.png`` (validation images with true class, predicted class and confidence,
    misclassified first, then by highest loss).

    The gallery reuses the losses and logits the validation step already computed; images are
    re-read from disk only for the few shown. During fit the gallery is redrawn while that stays
    within ``plot_time_share`` of the run's time, and always at the end of fit.

    Args:
        num_images: images per grid.
        every_n_epochs: pick the validation gallery every N epochs, and at the last epoch
            ``max_epochs`` allows (a run stopped earlier keeps its last due gallery).
        plot_time_share: the largest fraction of training wall time spent drawing the gallery
            (0: only at the end of fit; 1: whenever it is picked).
    """

    def __init__(
        self,
        num_images: int = 32,
        every_n_epochs: int = 1,
        plot_time_share: float = PLOT_TIME_SHARE,
    ) -> None:
        super().__init__(plot_time_share)
        self.num_images = num_images
        self.every_n_epochs = max(1, every_n_epochs)
        self._candidates: torch.Tensor | None = None
        self._shown: tuple[torch.Tensor, int, float] | None = None
        self._train_done = False

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Show the first training batch exactly as the network receives it (before mixing)."""
        if self._train_done or not trainer.is_global_zero:
            return
        self._train_done = True
        images, labels, _ = batch
        model = classifier_module(pl_module)
        assert model.preprocessing is not None
        shown = denormalize(images[: self.num_images].detach(), model.preprocessing).cpu()
        names = model.class_names
        captions = [names[int(i)] for i in labels[: self.num_images].tolist()]
        path = run_dir(trainer) / "train_batch.png"
        title, colours = "Augmented training batch", ["black"] * len(captions)
        grid = partial(_save_grid, trainer, list(shown), captions, colours, title, path, 0)
        submit_figure(f"train_batch@{id(self)}", grid)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting candidates."""
        self._candidates = None

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
        """Keep the epoch's highest-loss images so far with their logits (on device: no sync
        per batch; ``num_images`` rows however long the epoch)."""
        if trainer.sanity_checking or not isinstance(outputs, dict):
            return
        losses, logits, indices = outputs["losses"], outputs["logits"], outputs["indices"]
        labels = batch[1]
        score = hardness(losses, logits.argmax(1), labels)
        columns = [score.float(), indices.float(), labels.float()]
        rows = torch.cat([torch.stack(columns, 1), logits.float()], 1)
        if self._candidates is not None:
            rows = torch.cat([self._candidates, rows])
        keep = rows[:, 0].topk(min(self.num_images, len(rows))).indices
        self._candidates = rows[keep]

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Pick the overall top images across processes and draw the gallery."""
        if not epoch_due(trainer, self.every_n_epochs):
            return
        model = classifier_module(pl_module)
        width = 3 + model.num_classes
        local = self._candidates.cpu() if self._candidates is not None else torch.empty(0, width)
        rows = torch.cat([torch.as_tensor(p) for p in gather_objects(local)])
        if not trainer.is_global_zero:
            return
        rows = rows[rows[:, 0] > -torch.inf]
        rows = rows[rows[:, 0].argsort(descending=True)][: self.num_images]
        self._shown = (rows, trainer.current_epoch + 1, model.temperature) if len(rows) else None
        self._request(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Redraw the last gallery if calibration (at the end of training) changed the
        temperature its confidences were drawn with, then draw what waits."""
        shown = self._shown
        temperature = classifier_module(pl_module).temperature
        if trainer.is_global_zero and shown is not None and shown[2] != temperature:
            self._request(trainer, pl_module)
        super().on_fit_end(trainer, pl_module)

    def _request(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._shown is None:
            return
        rows, epoch, _ = self._shown
        model = classifier_module(pl_module)
        self._shown = (rows, epoch, model.temperature)
        data = image_data(trainer)
        draw = partial(
            self._draw,
            trainer,
            data,
            model.class_names,
            rows,
            epoch,
            trainer.global_step,
            model.temperature,
        )
        self.draws.request(trainer, "val_predictions", draw)

    @staticmethod
    def _draw(
        trainer: pl.Trainer,
        data: ImageData,
        names: list[str],
        rows: torch.Tensor,
        epoch: int,
        step: int,
        temperature: float,
    ) -> None:
        """Re-read the chosen validation images and draw the gallery with calibrated
        confidences, ``softmax(logits / temperature)`` (figure thread)."""
        confidence, predicted = (rows[:, 3:].double() / temperature).softmax(1).max(1)
        images, captions, colours = [], [], []
        for (index, label), pred, conf in zip(
            rows[:, 1:3].long().tolist(), predicted.tolist(), confidence.tolist(), strict=True
        ):
            images.append(data.eval_image("val", index))
            captions.append(f"true: {names[label]}\npred: {names[pred]}\nconfidence {conf:.2f}")
            colours.append("black" if label == pred else "red")
        title = f"Validation, epoch {epoch}: misclassified, then highest loss"
        if temperature != 1.0:
            title += f" (calibrated confidences, T = {temperature:.3g})"
        path = run_dir(trainer) / "val_predictions.png"
        _save_grid(trainer, images, captions, colours, title, path, step)
