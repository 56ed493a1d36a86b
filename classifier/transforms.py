"""The preprocessing contract and the torchvision v2 pipelines built from it.

Images travel as ``uint8`` tensors through every CPU transform (cheaper per core than float),
and are converted to normalised ``float32`` only after the batch reaches the training device
(:func:`normalize`). The same :class:`Preprocessing` is saved in checkpoints and in ONNX metadata
so that a consumer reproduces evaluation exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms import v2

from classifier.checked_values import preprocessing_problem
from classifier.errors import ConfigError

#: ImageNet statistics, used when a backbone's pretrained config has none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AutoAugment = Literal["none", "randaugment", "trivialaugment"]
Interpolation = Literal["bilinear", "bicubic", "nearest"]


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the network, at evaluation time.

    Attributes:
        image_size: side of the square crop fed to the network.
        resize_size: the shorter side is resized to this before the centre crop.
        interpolation: resize interpolation.
        mean: per-channel mean, for RGB values scaled to [0, 1].
        std: per-channel standard deviation, for RGB values scaled to [0, 1].
    """

    image_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        """Refuse sizes, means and deviations that no image can go through (a ``crop_pct`` of
        1e-4 asked for a resize to 320,000 px; a zero ``std`` for NaN results), from a config
        or a checkpoint alike.

        Raises:
            ConfigError: naming what is out of range.
        """
        found = preprocessing_problem(asdict(self))
        if found:
            raise ConfigError(
                f"the preprocessing ({_described(self)}): {found.removeprefix('its ')}; check "
                "data.image_size, data.crop_pct, data.mean and data.std"
            )

    @classmethod
    def from_crop_pct(
        cls,
        image_size: int,
        crop_pct: float,
        interpolation: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> Preprocessing:
        """Build from timm's ``crop_pct`` convention (resize = size / crop_pct)."""
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        return cls(
            image_size=image_size,
            resize_size=math.floor(image_size / crop_pct),
            interpolation=interpolation,
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
        )

    @classmethod
    def for_backbone(
        cls,
        backbone: str | None,
        image_size: int,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> Preprocessing:
        """The given settings; those left ``None`` from timm's pretrained config of the
        ``backbone`` model name (what ``timm.data.resolve_model_data_config`` gives its model,
        read without building it), else 0.875, bilinear and ImageNet's statistics."""
        defaults: dict[str, Any] = {}
        if backbone:
            import timm.data
            from timm.models import get_pretrained_cfg

            found = get_pretrained_cfg(backbone)
            if found is not None:
                defaults = timm.data.resolve_data_config(pretrained_cfg=found.to_dict())
        return cls.from_crop_pct(
            image_size=image_size,
            crop_pct=crop_pct or defaults.get("crop_pct", 0.875),
            interpolation=interpolation or defaults.get("interpolation", "bilinear"),
            mean=mean or defaults.get("mean", IMAGENET_MEAN),
            std=std or defaults.get("std", IMAGENET_STD),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, also describing the network input."""
        return {
            **asdict(self),
            "mean": list(self.mean),
            "std": list(self.std),
            "crop": "center",
            "input_layout": "NCHW, RGB",
            "input_range": "float32: (pixel / 255 - mean) / std",
        }

    def mean_std(
        self, device: torch.device | str | None = None, scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as ``1x3x1x1`` float tensors (times ``scale``: 255 for pixel values),
        the shape :func:`normalize` broadcasts over an NCHW batch."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * scale
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * scale
        return mean, std

    def contract(
        self, class_names: list[str], uint8_input: bool = False, temperature: float = 1.0
    ) -> dict[str, Any]:
        """Everything a consumer of an exported model needs: classes, preprocessing and input/
        output description (ONNX metadata and ``labels_mapping.json``).

        A superset of the ``labels_mapping.json`` of ``ortizeg/classifier-training``, whose
        ONNX inferencer reads ``idx_to_class`` (string keys) and ``normalization.mean/std``:
        ``num_classes``, ``class_to_idx``, ``idx_to_class`` and ``normalization`` are there too.
        """
        info = self.to_dict()
        if uint8_input:
            info["input_range"] = "uint8 RGB 0-255; normalisation is inside the graph"
        return {
            "num_classes": len(class_names),
            "class_names": class_names,
            "class_to_idx": {name: i for i, name in enumerate(class_names)},
            "idx_to_class": {str(i): name for i, name in enumerate(class_names)},
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "labels": {str(i): name for i, name in enumerate(class_names)},
            **info,
            "input_dtype": "uint8" if uint8_input else "float32",
            "input_name": "images",
            "output_name": "logits",
            "output": "logits; probabilities = softmax(logits / temperature), calibrated",
            "probabilities_name": "probabilities",
            "temperature": temperature,
            "background_for_transparency": "white",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict` (extra keys are ignored)."""
        return cls(
            image_size=int(data["image_size"]),
            resize_size=int(data["resize_size"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(m) for m in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(s) for s in data["std"]),  # type: ignore[arg-type]
        )


def _mode(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode(name)


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Resize the shorter side, centre-crop; ``uint8`` in, ``uint8`` out."""
    return v2.Compose(
        [
            v2.Resize(pre.resize_size, interpolation=_mode(pre.interpolation), antialias=True),
            v2.CenterCrop(pre.image_size),
        ]
    )


def train_transform(
    pre: Preprocessing,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    auto_augment: AutoAugment = "none",
    random_erasing: float = 0.0,
) -> v2.Compose:
    """Training augmentation on ``uint8`` tensors (see ``ImageFolderDataModule`` arguments)."""
    steps: list[Any] = [
        v2.RandomResizedCrop(
            pre.image_size, scale=scale, interpolation=_mode(pre.interpolation), antialias=True
        )
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    if auto_augment == "randaugment":
        steps.append(v2.RandAugment(interpolation=v2.InterpolationMode.BILINEAR))
    elif auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR))
    if random_erasing > 0:
        # Erased pixels take the mean colour, which is zero after normalisation.
        fill = [round(m * 255) for m in pre.mean]
        steps.append(v2.RandomErasing(p=random_erasing, value=fill))
    return v2.Compose(steps)


def split_transform(split: str, pre: Preprocessing, options: Any) -> v2.Compose:
    """The transform of ``split``: the training augmentation set by the data module's
    ``options`` (``scale``, ``hflip``, ``color_jitter``, ``auto_augment``, ``random_erasing``)
    for ``train``, the evaluation transform for every other split."""
    if split != "train":
        return eval_transform(pre)
    return train_transform(
        pre,
        scale=options["scale"],
        hflip=options["hflip"],
        color_jitter=options["color_jitter"],
        auto_augment=options["auto_augment"],
        random_erasing=options["random_erasing"],
    )


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8`` NCHW batch to normalised ``float32`` (mean/std shaped ``1x3x1x1``)."""
    return (images.float().div_(255.0) - mean) / std


def denormalize(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Normalised float NCHW batch back to RGB in [0, 1], for showing images."""
    mean, std = pre.mean_std(images.device)
    return (images.float() * std + mean).clamp(0, 1)


#: Sides, as fractions of the image's, of the centred crops ``tta: crops`` adds.
TTA_CROPS = (0.95, 0.9)


def tta_log_probs(
    network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str
) -> torch.Tensor:
    """The log of the mean probabilities ``network`` gives the views of ``mode`` (``flip``,
    ``crops`` or ``flip+crops``): logits in every use downstream, as softmax gives the
    averaged probabilities back."""
    views = tta_views(images, flip="flip" in mode, crops="crops" in mode)
    mean = torch.stack([network(v).float().softmax(dim=1) for v in views]).mean(0)
    return mean.clamp_min(1e-12).log()


def tta_views(images: torch.Tensor, flip: bool, crops: bool) -> list[torch.Tensor]:
    """The batch, its mirror image (``flip``), and centred crops of 95 % and 90 % of the side
    resized back (``crops``): slight zoom-ins, the kind of view RandomResizedCrop trains on
    (corner crops and shifts measured worse: small models are not shift-invariant)."""
    views = [images]
    if flip:
        views.append(images.flip(-1))
    if crops:
        height, width = images.shape[-2:]
        for side in TTA_CROPS:
            h, w = round(height * side), round(width * side)
            top, left = (height - h) // 2, (width - w) // 2
            crop = images[..., top : top + h, left : left + w].float()
            resized = F.interpolate(
                crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True
            )
            views.append(resized.to(images.dtype))
    return views


def _described(pre: Preprocessing) -> str:
    return (
        f"image_size {pre.image_size}, resize_size {pre.resize_size}, mean {list(pre.mean)}, "
        f"std {list(pre.std)}"
    )
