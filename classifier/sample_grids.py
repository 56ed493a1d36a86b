"""``SampleGrids``: augmented training images, and a top-losses gallery of validation images."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier.contract import ImageData, classifier_module, image_data
from classifier.dist import gather_objects
from classifier.figure_thread import (
    PLOT_TIME_SHARE,
    PlottingCallback,
    epoch_due,
    log_image,
    submit_figure,
)
from classifier.files import run_dir
from classifier.picture_grids import as_uint8, picture_grid, save_png
from classifier.stage_metrics import hardness
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
    log_image(trainer, f"samples/{path.stem}", path, step)


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
        self._candidates: list[torch.Tensor] = []
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
        self._candidates = []

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
        """Keep the batch's highest-loss images (on device: no sync per batch)."""
        if trainer.sanity_checking or not isinstance(outputs, dict):
            return
        losses, logits, indices = outputs["losses"], outputs["logits"], outputs["indices"]
        labels = batch[1]
        probs = logits.float().softmax(1)
        confidence, predicted = probs.max(1)
        score = hardness(losses, predicted, labels)
        top = score.topk(min(self.num_images, len(score))).indices
        self._candidates.append(
            torch.stack(
                [
                    score[top],
                    indices[top].float(),
                    labels[top].float(),
                    predicted[top].float(),
                    confidence[top],
                ],
                1,
            )
        )

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Pick the overall top images across processes and draw the gallery."""
        if not epoch_due(trainer, self.every_n_epochs):
            return
        local = torch.cat(self._candidates).cpu() if self._candidates else torch.empty(0, 5)
        rows = torch.cat([torch.as_tensor(p) for p in gather_objects(local)])
        if not trainer.is_global_zero:
            return
        rows = rows[rows[:, 0] > -torch.inf]
        rows = rows[rows[:, 0].argsort(descending=True)][: self.num_images]
        epoch = trainer.current_epoch + 1
        if len(rows):
            data = image_data(trainer)
            names, step = classifier_module(pl_module).class_names, trainer.global_step
            draw = partial(self._draw, trainer, data, names, rows, epoch, step)
            self.draws.request(trainer, "val_predictions", draw)

    @staticmethod
    def _draw(
        trainer: pl.Trainer,
        data: ImageData,
        names: list[str],
        rows: torch.Tensor,
        epoch: int,
        step: int,
    ) -> None:
        """Re-read the chosen validation images and draw the gallery (figure thread)."""
        images, captions, colours = [], [], []
        for _, index, label, pred, conf in rows.tolist():
            images.append(data.eval_image("val", int(index)))
            captions.append(
                f"true: {names[int(label)]}\npred: {names[int(pred)]}\nconfidence {conf:.2f}"
            )
            colours.append("black" if int(label) == int(pred) else "red")
        title = f"Validation, epoch {epoch}: misclassified, then highest loss"
        path = run_dir(trainer) / "val_predictions.png"
        _save_grid(trainer, images, captions, colours, title, path, step)
