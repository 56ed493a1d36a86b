"""Training augmentations and the evaluation pipeline keep the uint8 contract and do their job."""

from __future__ import annotations

import pytest
import torch

from classifier.transforms import (
    Preprocessing,
    denormalize,
    eval_transform,
    normalize,
    train_transform,
)

PRE = Preprocessing.from_crop_pct(32, 0.875, "bilinear", (0.5, 0.25, 0.75), (0.2, 0.2, 0.2))


def _image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 48, 60), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize(
    "options",
    [
        {"auto_augment": "randaugment"},
        {"auto_augment": "trivialaugment"},
        {"color_jitter": 0.4},
        {"random_erasing": 1.0},
    ],
    ids=["randaugment", "trivialaugment", "color_jitter", "random_erasing"],
)
def test_each_augmentation_keeps_uint8_and_size_and_changes_pixels(
    options: dict[str, object],
) -> None:
    plain = train_transform(PRE, scale=(1.0, 1.0), hflip=0.0)
    augmented = train_transform(PRE, scale=(1.0, 1.0), hflip=0.0, **options)  # type: ignore[arg-type]
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        reference = plain(_image())
        torch.manual_seed(seed)
        out = augmented(_image())
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
        changed += not torch.equal(out, reference)
    assert changed >= 4


def test_random_erasing_fills_with_the_mean_colour() -> None:
    transform = train_transform(PRE, scale=(1.0, 1.0), hflip=0.0, random_erasing=1.0)
    torch.manual_seed(0)
    out = transform(torch.zeros(3, 64, 64, dtype=torch.uint8))
    filled = out.flatten(1).amax(1)  # erased area is the only non-zero part
    assert filled.tolist() == [round(m * 255) for m in PRE.mean]
    assert normalize(out[None], *PRE.mean_std()).abs().amin() < 0.01  # mean colour -> 0


def test_evaluation_resizes_the_short_side_then_centre_crops() -> None:
    assert PRE.resize_size == 36
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[:, :, 38:42] = 255  # a centred stripe survives the centre crop
    out = eval_transform(PRE)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert out[:, :, 15:17].float().mean() > 200 and out[:, :, :5].max() == 0


def test_normalize_and_denormalize_are_inverse() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    floats = normalize(images, *PRE.mean_std())
    assert floats.dtype == torch.float32
    assert torch.allclose(denormalize(floats, PRE) * 255, images.float(), atol=1e-3)


def test_preprocessing_round_trips_through_its_dict() -> None:
    assert Preprocessing.from_dict(PRE.to_dict()) == PRE
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing.from_crop_pct(32, 1.5, "bilinear", (0, 0, 0), (1, 1, 1))


def test_tta_views_are_the_image_its_mirror_and_centred_zooms() -> None:
    from classifier.transforms import tta_views

    images = torch.zeros(2, 3, 40, 40)
    images[..., 14:26, 14:26] = 1.0  # a centred square grows in a zoomed-in view
    assert len(tta_views(images, flip=False, crops=False)) == 1
    assert torch.equal(tta_views(images, flip=True, crops=False)[1], images.flip(-1))
    views = tta_views(images, flip=True, crops=True)
    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    area = [float(v.sum()) for v in views]  # the square's area grows as 1 / side^2
    assert area[2] == pytest.approx(area[0] / 0.95**2, rel=0.05)
    assert area[3] == pytest.approx(area[0] / 0.9**2, rel=0.05)


def test_tta_averages_the_views_probabilities() -> None:
    from classifier.model import ImageClassifier
    from classifier.transforms import tta_views

    model = ImageClassifier("test_resnet", ["a", "b", "c"], pretrained=False, tta="flip+crops")
    model.eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        averaged = model._eval_logits(images, tta=True)[0].softmax(dim=1)
        views = tta_views(images, flip=True, crops=True)
        expected = torch.stack([model(v).softmax(dim=1) for v in views]).mean(0)
        assert torch.allclose(averaged, expected, atol=1e-5)
        assert torch.allclose(model._eval_logits(images, tta=False)[0], model(images))
