"""NVIDIA DALI pipelines that decode and augment like :mod:`classifier.transforms` does on the CPU.

The training graph is torchvision's recipe rebuilt from DALI operators: RandomResizedCrop
(fused with the decode, so only the crop is decoded), horizontal flip, colour jitter,
TrivialAugmentWide or RandAugment (DALI's ``auto_aug`` policies), random erasing with the mean
colour. The evaluation graph resizes the shorter side and centre-crops, as the ONNX contract
does. Both end in ``uint8`` CHW, so the data module normalises on the device as for the CPU path.

On a GPU the JPEGs are decoded by nvJPEG (``device="mixed"``) and everything after runs on the
GPU; with ``device_id=None`` the same graph runs on CPU operators (what the tests use). DALI is
an optional dependency (``pip install 'classifier[dali]'``), imported only when asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from classifier.splits import DataError
from classifier.transforms import AutoAugment, Preprocessing

#: torchvision's RandomResizedCrop aspect ratios and RandomErasing's area and aspect ranges.
CROP_RATIO = (3 / 4, 4 / 3)
ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
#: Formats (as the pre-scan names them) that DALI decodes differently from the CPU path or not
#: at all: grey+alpha and LAB TIFFs come out with other pixels, GIF fails. ``data.decode:
#: dali`` refuses a train or val split holding any.
DALI_REFUSED = frozenset({b"GIF", b"TIFF"})


def dali() -> ModuleType:
    """``nvidia.dali``, or a one-line error saying how to install it."""
    try:
        import nvidia.dali as module
        import nvidia.dali.plugin.pytorch  # noqa: F401 (the loader's iterator)
    except ImportError as error:
        raise DataError(
            "data.decode: dali needs NVIDIA DALI: pip install 'classifier[dali]' "
            f"(or nvidia-dali-cuda130 for CUDA 13); importing it failed: {error}"
        ) from None
    return module  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Augment:
    """The training augmentation settings (the data module's arguments of the same names)."""

    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: AutoAugment = "none"
    random_erasing: float = 0.0


def _interp(types: Any, name: str) -> Any:
    return {
        "bilinear": types.INTERP_LINEAR,
        "bicubic": types.INTERP_CUBIC,
        "nearest": types.INTERP_NN,
    }[name]


def build(
    files: list[str],
    pre: Preprocessing,
    augment: Augment | None,
    batch_size: int,
    device_id: int | None,
    threads: int,
    seed: int,
) -> Any:
    """A built pipeline over ``files`` in order, yielding ``images`` (``uint8`` NCHW) and
    ``positions`` (the index into ``files`` of each sample): the training graph with
    ``augment``, else the evaluation graph. The last batch is partial (never padded)."""
    module = dali()
    fn, types = module.fn, module.types

    @module.pipeline_def(enable_conditionals=augment is not None)  # type: ignore[untyped-decorator]
    def graph() -> tuple[Any, Any]:
        encoded, positions = fn.readers.file(
            files=files,
            labels=list(range(len(files))),
            random_shuffle=False,
            pad_last_batch=True,
            dont_use_mmap=True,  # a file truncated while mapped would kill the process (SIGBUS)
            name="reader",
        )
        decoder = "cpu" if device_id is None else "mixed"
        interp = _interp(types, pre.interpolation)
        if augment is None:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            images = _resize_and_crop(module, images, pre, interp)
            flip = 0
        else:
            images = fn.decoders.image_random_crop(
                encoded,
                device=decoder,
                output_type=types.RGB,
                random_area=list(augment.scale),
                random_aspect_ratio=list(CROP_RATIO),
                num_attempts=10,
            )
            side = pre.image_size
            images = fn.resize(images, size=[side, side], interp_type=interp)
            images = _augment(module, images, augment, pre)
            flip = fn.random.coin_flip(probability=augment.hflip) if augment.hflip > 0 else 0
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.UINT8,
            output_layout="CHW",
            crop=(pre.image_size, pre.image_size),
            mirror=flip,
        )
        return images, positions

    pipeline = graph(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed)
    pipeline.build()
    return pipeline


def _resize_and_crop(module: Any, images: Any, pre: Preprocessing, interp: Any) -> Any:
    """torchvision's ``Resize(resize_size)`` and ``CenterCrop(image_size)`` to the pixel: the
    longer side truncated (``int(size * long / short)``), the crop's offset rounded half to
    even (DALI's own centre crop rounds half up: one pixel off on odd margins)."""
    fn, types, math_ops = module.fn, module.types, module.math
    shape = images.shape(dtype=types.INT32)
    height, width = shape[0], shape[1]
    short = math_ops.min(height, width)
    size = fn.stack((pre.resize_size * height) // short, (pre.resize_size * width) // short)
    images = fn.resize(images, size=fn.cast(size, dtype=types.FLOAT), interp_type=interp)
    side = pre.image_size
    margins = size - side
    half = margins // 2
    start = half + (margins & 1) * (half & 1)  # round(margin / 2) as Python rounds
    return fn.slice(images, start=start, shape=[side, side], axes=[0, 1])


def _augment(module: Any, images: Any, augment: Augment, pre: Preprocessing) -> Any:
    """Colour jitter, the automatic policy and random erasing on ``SxS`` HWC images."""
    fn = module.fn
    if augment.color_jitter > 0:
        low, high = 1 - augment.color_jitter, 1 + augment.color_jitter
        images = fn.color_twist(
            images,
            brightness=fn.random.uniform(range=[max(0.0, low), high]),
            contrast=fn.random.uniform(range=[max(0.0, low), high]),
            saturation=fn.random.uniform(range=[max(0.0, low), high]),
        )
    if augment.auto_augment != "none":
        from nvidia.dali.auto_aug import rand_augment, trivial_augment

        if augment.auto_augment == "randaugment":  # torchvision's defaults: 2 ops, magnitude 9
            images = rand_augment.rand_augment(images, n=2, m=9, fill_value=0)
        else:
            images = trivial_augment.trivial_augment_wide(images, fill_value=0)
    if augment.random_erasing > 0:
        images = _erase(module, images, augment.random_erasing, pre)
    return images


def _erase(module: Any, images: Any, probability: float, pre: Preprocessing) -> Any:
    """torchvision's RandomErasing: with ``probability``, a rectangle of 2-33 % of the area
    and aspect ratio 0.3-3.3 (log-uniform), placed uniformly, filled with the mean colour."""
    fn, math_ops = module.fn, module.math
    side = float(pre.image_size)
    area = fn.random.uniform(range=list(ERASE_AREA)) * (side * side)
    ratio = math_ops.exp(fn.random.uniform(range=[math.log(r) for r in ERASE_RATIO]))
    height = math_ops.min(math_ops.sqrt(area * ratio), side)
    width = math_ops.min(math_ops.sqrt(area / ratio), side)
    top = fn.random.uniform(range=[0.0, 1.0]) * (side - height)
    left = fn.random.uniform(range=[0.0, 1.0]) * (side - width)
    if fn.random.coin_flip(probability=probability):
        images = fn.erase(
            images,
            anchor=fn.stack(top, left),
            shape=fn.stack(height, width),
            axis_names="HW",
            fill_value=[round(m * 255) for m in pre.mean],
        )
    return images
