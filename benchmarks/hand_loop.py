"""The training script a user writes by hand, as its own process, for whole-command timing:

    python -m benchmarks.hand_loop DATA_DIR EPOCHS [MODEL] [SIZE] [BATCH] [WORKERS]

timm model, torchvision ``ImageFolder`` with v2 transforms, AdamW, cross-entropy; each epoch
trains, then measures validation top-1. It writes no files (no checkpoints, no plots).
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from torchvision import datasets
from torchvision.transforms import v2

from benchmarks.startup import record_startup

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main(data: Path, epochs: int, model_name: str, size: int, batch: int, workers: int) -> None:
    torch.manual_seed(0)
    train_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    eval_tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    train = datasets.ImageFolder(str(data / "train"), train_tf)
    val = datasets.ImageFolder(str(data / "val"), eval_tf)
    kwargs = {"num_workers": workers, "persistent_workers": workers > 0}
    loader = torch.utils.data.DataLoader(train, batch, shuffle=True, drop_last=True, **kwargs)
    val_loader = torch.utils.data.DataLoader(val, 2 * batch, **kwargs)
    model = timm.create_model(model_name, pretrained=False, num_classes=len(train.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    for epoch in range(epochs):
        top1 = train_and_validate(model, optimizer, loader, val_loader, label_smoothing=0.1)
        print(f"epoch {epoch}: val top1 {top1:.3f}", flush=True)


def train_and_validate(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,  # type: ignore[type-arg]
    val_loader: torch.utils.data.DataLoader,  # type: ignore[type-arg]
    label_smoothing: float = 0.0,
) -> float:
    """One epoch as a user writes it: train, then validation top-1."""
    model.train()
    for images, labels in loader:
        record_startup()  # the first step: for make bench's start-up time (no-op otherwise)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(images), labels, label_smoothing=label_smoothing
        )
        loss.backward()
        optimizer.step()
    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for images, labels in val_loader:
            correct += int((model(images).argmax(1) == labels).sum())
            seen += len(labels)
    return correct / max(1, seen)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0]),
        int(args[1]),
        args[2] if len(args) > 2 else "resnet18",
        int(args[3]) if len(args) > 3 else 32,
        int(args[4]) if len(args) > 4 else 64,
        int(args[5]) if len(args) > 5 else 2,
    )
