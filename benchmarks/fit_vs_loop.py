"""``classifier fit`` (default callbacks on) against the training loop a user writes by hand."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

EPOCHS = 3  # the first epoch is warm-up; the last two are timed, validation included
SIZE, BATCH, WORKERS, MODEL, LR = 112, 32, 1, "resnet10t", 1e-3


class EpochTimer(Callback):
    """Wall time from the start of epoch 1 to the end of training (every epoch's callback work
    included), and, separately, the end-of-fit work (figures that waited for the end of fit).
    Listed last, so its hooks run after the other callbacks' hooks."""

    seconds: float = 0.0
    end_of_fit_seconds: float = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end = time.perf_counter()
        EpochTimer.seconds = self._end - self._start

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        EpochTimer.end_of_fit_seconds = time.perf_counter() - self._end


def _framework(data: Path, root: Path) -> tuple[float, float]:
    from classifier.cli import main
    from classifier.safety import ENV_ALLOWED

    # The documented way to trust a callback of one's own: its package in the allow-list.
    os.environ[ENV_ALLOWED] = "benchmarks.fit_vs_loop"
    callbacks = (
        "[classifier.EMA, classifier.TrainingHistory, classifier.ConfusionMatrix,"
        " benchmarks.fit_vs_loop.EpochTimer]"
    )
    main(
        [
            "fit",
            "--seed_everything",
            "0",
            "--model.model_name",
            MODEL,
            "--model.pretrained",
            "false",
            "--model.lr",
            str(LR),
            "--model.scheduler",
            "constant",
            "--data.data_dir",
            str(data),
            "--data.image_size",
            str(SIZE),
            "--data.batch_size",
            str(BATCH),
            "--data.eval_batch_size",
            str(BATCH),
            "--data.num_workers",
            str(WORKERS),
            "--trainer.max_epochs",
            str(EPOCHS),
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.enable_model_summary",
            "false",
            f"--trainer.callbacks={callbacks}",
        ]
    )
    return EpochTimer.seconds, EpochTimer.end_of_fit_seconds


def _hand_loop(data: Path) -> float:
    """What a user writes: ImageFolder, v2 transforms on PIL, AdamW, accuracy each epoch."""
    import timm
    from torchvision import datasets
    from torchvision.transforms import v2

    from benchmarks.hand_loop import train_and_validate

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(SIZE, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    eval_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(SIZE / 0.875), antialias=True),
            v2.CenterCrop(SIZE),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    train = datasets.ImageFolder(str(data / "train"), train_tf)
    val = datasets.ImageFolder(str(data / "val"), eval_tf)
    loader = torch.utils.data.DataLoader(
        train, BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True
    )
    val_loader = torch.utils.data.DataLoader(
        val, BATCH, num_workers=WORKERS, persistent_workers=True
    )
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=len(train.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    start = 0.0
    for epoch in range(EPOCHS):
        if epoch == 1:
            start = time.perf_counter()
        top1 = train_and_validate(model, optimizer, loader, val_loader)
        print(f"hand loop epoch {epoch}: val top1 {top1:.3f}")
    return time.perf_counter() - start


def bench_fit(data: Path, root: Path, repeats: int = 2) -> dict[str, Any]:
    """Training throughput of both, interleaved; images/s over the timed epochs.

    ``ratio`` is the steady-state throughput (the goal); ``ratio_with_end_of_fit`` also charges
    the once-per-run end-of-fit figures to these two short epochs.
    """
    images = (EPOCHS - 1) * sum(1 for _ in (data / "train").rglob("*.jpg"))
    ours, whole, finals, theirs = [], [], [], []
    for repeat in range(repeats):
        if repeat % 2:  # ABBA order: neither side always runs on a warmer process
            theirs.append(images / _hand_loop(data))
        seconds, final = _framework(data, root / f"fit{repeat}")
        ours.append(images / seconds)
        whole.append(images / (seconds + final))
        finals.append(final)
        if not repeat % 2:
            theirs.append(images / _hand_loop(data))
    mine, hand = statistics.median(ours), statistics.median(theirs)
    return {
        "classifier_images_per_s": mine,
        "hand_loop_images_per_s": hand,
        "ratio": mine / hand,
        "end_of_fit_s": statistics.median(finals),
        "ratio_with_end_of_fit": statistics.median(whole) / hand,
    }
