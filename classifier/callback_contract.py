"""What callbacks (and the model) may use of the model and the data module: two small public
protocols.

:class:`~classifier.model.ImageClassifier` and :class:`~classifier.datamodule.ImageFolderDataModule`
implement them; a LightningModule or data module of your own works with classifier's callbacks
when it does too. Nothing else of either class is read by another module's code, so either
side can change its insides without breaking a callback.

The model reads the data module through :class:`ImageData` only (its preprocessing, loss
weights, epoch length and unreadable-file counts, at ``setup`` and at epoch ends); the data
module never reads the model: the backbone whose preprocessing it uses reaches it as the
``backbone`` argument, linked from ``model.model_name`` by the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from classifier.metrics import StageMetrics
    from classifier.selective import Selector
    from classifier.transforms import Preprocessing


@runtime_checkable
class ClassifierModule(Protocol):
    """The model side: class names, preprocessing, calibration and the network.

    Its steps' outputs are part of the contract: ``training_step`` returns ``{"loss",
    "logits"}`` (no ``logits`` for a batch mixed by MixUp/CutMix; optionally ``batch_loss``,
    the loss as logged, which callbacks prefer to Lightning's ``loss`` divided by the
    accumulation), the evaluation steps
    ``{"logits", "losses", "indices"}`` (and ``distance`` with an accept/reject rule); every
    batch is ``(images, labels, indices)`` with ``labels < 0`` for unreadable files.

    Attributes:
        class_names: class names in label order.
        num_classes: ``len(class_names)``.
        preprocessing: evaluation preprocessing (set from the data at setup or from a
            checkpoint); ``None`` before either.
        temperature: probabilities are ``softmax(logits / temperature)``.
        model: the network (a timm model): normalised float NCHW images in, logits out.
        train_top1: training top-1 accuracy of the epoch so far (a torchmetrics metric).
        device: where the network runs.
        selector: the accept/reject rule (``None`` until ``Calibration`` fits one).
    """

    class_names: list[str]
    num_classes: int
    preprocessing: Preprocessing | None
    temperature: float
    model: nn.Module
    train_top1: Any
    device: torch.device
    selector: Selector | None

    def stage_metrics(self, stage: str) -> StageMetrics:
        """Loss, summary metrics, confusion matrix and unreadable count of ``val``/``test``."""
        ...

    def network_copy(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A copy of the network with the weights of a checkpoint's ``state_dict``."""
        ...


@runtime_checkable
class ImageData(Protocol):
    """The data side: classes, splits as files and labels, and images as evaluated.

    Attributes:
        class_names: class names in label order.
        preprocessing: evaluation preprocessing (set at ``setup``).
        excluded: ``{split: {path: reason}}`` of files the pre-scan left out.
    """

    class_names: list[str]
    preprocessing: Preprocessing | None
    excluded: dict[str, dict[str, str]]

    def files(self, split: str) -> tuple[Sequence[Path], np.ndarray] | None:
        """The files of ``split`` and their labels (-1: unknown), after exclusions, read on
        first use; ``None`` when the split has no folder."""
        ...

    def class_counts(self, split: str) -> list[int]:
        """Images per class in ``split`` (after exclusions)."""
        ...

    def eval_image(self, split: str, index: int) -> torch.Tensor:
        """Image ``index`` of ``split`` as evaluation sees it: ``uint8`` ``3xHxW``, resized and
        cropped, not normalised."""
        ...

    def eval_loader(self, split: str, indices: Sequence[int] | None = None) -> DataLoader[Any]:
        """Every image of ``split`` (or those at ``indices``), on this process, unsharded:
        batches of ``uint8`` images, labels and indices, as evaluated, not normalised."""
        ...

    def drawn(self) -> torch.Tensor:
        """The training images this process trained on this epoch (indices into ``train``)."""
        ...

    def loss_weights(self) -> torch.Tensor | None:
        """Per-class loss weights, or ``None`` for uniform."""
        ...

    def train_batches_per_epoch(self) -> int:
        """Training batches each process runs per epoch (before ``limit_train_batches``)."""
        ...

    def new_failures(self, split: str) -> int:
        """Files of ``split`` that failed to load since the last call (this process)."""
        ...


@runtime_checkable
class AnnotatedData(Protocol):
    """An optional part of the data side: where each file of a split read from annotation
    files (JSONL, CSV) came from, for rows that point back to them."""

    def annotations(self, split: str) -> tuple[Sequence[str], Sequence[str]] | None:
        """``(origins, attributes)`` of ``split``'s files, in ``files`` order: each row's
        ``file:line`` and its attributes as JSON; ``None`` for class folders."""
        ...


def rows_of(data: object, split: str) -> tuple[Sequence[str], Sequence[str]] | None:
    """:meth:`AnnotatedData.annotations` of ``data``, or ``None`` when it has none."""
    return data.annotations(split) if isinstance(data, AnnotatedData) else None


def classifier_module(module: pl.LightningModule) -> ClassifierModule:
    """``module`` as a :class:`ClassifierModule`.

    Raises:
        TypeError: it lacks part of the protocol (callbacks need all of it).
    """
    if not isinstance(module, ClassifierModule):
        raise TypeError(
            f"this callback needs a LightningModule with {_members(ClassifierModule)} "
            f"(classifier.ImageClassifier has them), got {type(module).__name__}"
        )
    return module


def image_data(trainer: pl.Trainer) -> ImageData:
    """The trainer's data module as :class:`ImageData`.

    Raises:
        TypeError: there is none, or it lacks part of the protocol.
    """
    data = getattr(trainer, "datamodule", None)
    if not isinstance(data, ImageData):
        raise TypeError(
            f"this callback needs a data module with {_members(ImageData)} "
            f"(classifier.ImageFolderDataModule has them), got {type(data).__name__}"
        )
    return data


def optional_image_data(trainer: pl.Trainer | None) -> ImageData | None:
    """The trainer's data module as :class:`ImageData`, or ``None`` (another data module, or
    none: the model then trains without them, as Lightning would)."""
    data = getattr(trainer, "datamodule", None) if trainer is not None else None
    return data if isinstance(data, ImageData) else None


def _members(protocol: type) -> str:
    names = [n for n in vars(protocol) if not n.startswith("_")]
    names += list(getattr(protocol, "__annotations__", {}))
    return ", ".join(sorted(set(names)))
