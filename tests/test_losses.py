"""The training loss: class weights and label smoothing count, with and without MixUp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from classifier.datamodule import ImageFolderDataModule
from classifier.losses import cross_entropy, mixed_cross_entropy
from classifier.model import ImageClassifier

WEIGHTS = torch.tensor([1.0, 4.0, 0.5, 2.0])


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(9, 4, generator=generator), torch.tensor([0, 1, 1, 1, 2, 3, 0, 1, 3])


@pytest.mark.parametrize("weight", [None, WEIGHTS], ids=["uniform", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_loss_of_one_hot_targets_is_the_plain_loss(
    weight: torch.Tensor | None, smoothing: float
) -> None:
    logits, labels = _batch()
    plain = cross_entropy(logits, labels, weight, smoothing)
    mixed = mixed_cross_entropy(logits, F.one_hot(labels, 4).float(), weight, smoothing)
    assert float(mixed) == pytest.approx(float(plain), rel=1e-6)


def test_mixed_loss_is_the_mix_of_the_two_plain_losses_by_weight() -> None:
    logits, labels = _batch()
    other = labels.roll(1)
    lam = 0.7
    mix = lam * F.one_hot(labels, 4).float() + (1 - lam) * F.one_hot(other, 4).float()
    per_image_a = F.cross_entropy(logits, labels, reduction="none") * WEIGHTS[labels]
    per_image_b = F.cross_entropy(logits, other, reduction="none") * WEIGHTS[other]
    expected = (lam * per_image_a + (1 - lam) * per_image_b).sum() / (
        lam * WEIGHTS[labels] + (1 - lam) * WEIGHTS[other]
    ).sum()
    assert float(mixed_cross_entropy(logits, mix, WEIGHTS)) == pytest.approx(float(expected))


def test_class_weights_and_label_smoothing_change_the_loss() -> None:
    logits, labels = _batch()
    plain = float(cross_entropy(logits, labels))
    assert float(cross_entropy(logits, labels, WEIGHTS)) != pytest.approx(plain)
    assert float(cross_entropy(logits, labels, label_smoothing=0.1)) != pytest.approx(plain)
    # Weighting up the class with the highest mean loss raises the (weighted mean) loss.
    losses = F.cross_entropy(logits, labels, reduction="none")
    worst = int(torch.stack([losses[labels == c].mean() for c in range(4)]).argmax())
    heavier = torch.ones(4).index_fill(0, torch.tensor([worst]), 10.0)
    assert float(cross_entropy(logits, labels, heavier)) > plain


def _step(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    with pytest.warns(UserWarning, match="self.log"):  # no trainer: nothing to log to
        return float(model.training_step((images, labels, torch.arange(len(labels))), 0)["loss"])


def test_list_class_weights_reach_the_training_loss(image_folder: Path) -> None:
    data = ImageFolderDataModule(str(image_folder), class_weights=[1.0, 3.0, 0.5], num_workers=0)
    data.setup("fit")
    weights = data.loss_weights()
    assert weights is not None and weights.tolist() == [1.0, 3.0, 0.5]
    model = ImageClassifier("test_resnet", ["cat", "dog", "fox"], pretrained=False).eval()
    model.class_weights.copy_(weights)  # what setup() does with the data module's weights
    model.use_class_weights = True
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 1, 2, 0, 1])
    with torch.no_grad():
        logits = model(images)
        loss = _step(model, images, labels)
    assert loss == pytest.approx(float(cross_entropy(logits, labels, weights)), rel=1e-5)
    assert loss != pytest.approx(float(cross_entropy(logits, labels)), rel=1e-3)
    bad = ImageFolderDataModule(str(image_folder), class_weights=[1.0, 2.0], num_workers=0)
    bad.setup("fit")
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        bad.loss_weights()


def test_a_mixed_training_step_applies_smoothing_and_weights_in_the_loss() -> None:
    model = ImageClassifier(
        "test_resnet", ["a", "b", "c", "d"], pretrained=False, mixup=0.4, label_smoothing=0.1
    ).eval()
    model.class_weights.copy_(WEIGHTS)
    model.use_class_weights = True
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    np.random.seed(0)  # timm's Mixup draws lambda from NumPy
    mixed, mix = model.mixup_fn(images.clone(), labels)
    with torch.no_grad():
        expected = float(mixed_cross_entropy(model(mixed), mix, WEIGHTS, 0.1))
        np.random.seed(0)
        assert _step(model, images.clone(), labels) == pytest.approx(expected, rel=1e-5)


def test_mixup_targets_carry_no_smoothing_the_loss_adds_it() -> None:
    model = ImageClassifier(
        "test_resnet", ["a", "b", "c", "d"], pretrained=False, mixup=0.4, label_smoothing=0.1
    )
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    _, mix = model.mixup_fn(images, labels)
    assert mix.sum(1).tolist() == pytest.approx([1.0] * 4)
    assert int((mix > 0).sum(1).max()) <= 2  # two classes per image: no smoothing mass
