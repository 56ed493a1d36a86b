"""Training and validation batches decoded by NVIDIA DALI (``data.decode: dali``).

The loaders read our own file list in our own order: the pre-scan's exclusions, the class map and
the :class:`~classifier.sampler.EpochSampler` draw (with its DDP shard and exact resume to the
sample) or the evaluation :class:`~classifier.sampler.ShardSampler`. DALI's file reader gets that
epoch's paths with each one's position as its label, so every batch is mapped back to dataset
indices and labels here. Batches are ``(uint8 NCHW images, labels, indices)`` like the CPU path's.

A file DALI fails on stops its pipeline; the loader then finds which files of the batches in
flight cannot be decoded (by our own decoder, or by a format DALI does not read), names each one
and applies the CPU path's rules: in training the next file takes its place, in evaluation the
sample is marked unreadable (ignored by the metrics). The pipeline is rebuilt from that batch.

NVIDIA DALI pipelines that decode and augment like :mod:`classifier.transforms` does on the CPU.

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

import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from classifier.errors import printable
from classifier.image_dataset import UNREADABLE, ImageDataset, load_rgb, sample_seed
from classifier.resume import EpochResume
from classifier.sampler import EpochSampler, ShardSampler
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


log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: Leading bytes of the formats DALI's image decoder reads.
DALI_FORMATS = (
    b"\xff\xd8",  # JPEG
    b"\x89PNG",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"\xffO\xffQ",
    b"P1",
    b"P2",
    b"P3",
    b"P4",
    b"P5",
    b"P6",
)
#: Files tried in place of one that fails in training (as the CPU path's dataset does).
MAX_REPLACEMENTS = 10


def undecodable(path: str) -> str | None:
    """Why DALI cannot use the image at ``path``, or ``None`` when it can."""
    try:
        load_rgb(path)  # a file nothing can read is named as such, not as DALI's
        with open(path, "rb") as file:
            head = file.read(16)
    except Exception as error:  # decoder errors vary by format
        return str(error) or type(error).__name__
    if not (head.startswith(DALI_FORMATS) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return "a format DALI does not decode (use data.decode: cpu)"
    return None


def dali_cause(error: BaseException) -> str:
    """The line of a DALI error that says what went wrong (its last line is always "Current
    pipeline object is no longer valid"), at most 300 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("encountered:") and i + 1 < len(lines):
            return lines[i + 1][:300]
    useful = [
        line
        for line in lines
        if not line.startswith(
            ("Critical error", "Error in CPU operator", "Error in MIXED", "File ")
        )
        and "no longer valid" not in line
    ]
    return (useful[0] if useful else lines[-1] if lines else type(error).__name__)[:300]


class DaliLoader:
    """Batches of one split decoded and augmented by DALI, in its sampler's order.

    Args:
        dataset: the split's files, labels and failure counter.
        sampler: the training :class:`EpochSampler` or an evaluation :class:`ShardSampler`.
        batch_size: images per batch.
        preprocessing: the evaluation contract (sizes, interpolation).
        augment: the training augmentation; ``None`` evaluates (resize and centre crop).
        device_id: the CUDA device that decodes (nvJPEG) and augments; ``None`` runs DALI's
            CPU operators.
        threads: DALI's CPU threads.
    """

    #: Lightning reads a loader's ``sampler`` and ``batch_sampler``: the sampler's order is
    #: batched here, so there is no batch sampler.
    batch_sampler = None

    def __init__(
        self,
        dataset: ImageDataset,
        sampler: EpochSampler | ShardSampler,
        batch_size: int,
        preprocessing: Preprocessing,
        augment: Augment | None = None,
        device_id: int | None = None,
        threads: int = 4,
    ) -> None:
        dali()  # the one-line error before anything else, if DALI is missing
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = batch_size
        self.preprocessing = preprocessing
        self.augment = augment
        self.device_id = device_id
        self.threads = max(1, threads)
        #: Dataset indices DALI could not use, with the reason (kept across epochs).
        self.failed: dict[int, str] = {}

    def __len__(self) -> int:
        samples = len(self.sampler)
        if isinstance(self.sampler, EpochSampler) and self.sampler.usable is not None:
            samples = self.sampler.usable
        return -(-samples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        sampler = self.sampler
        if isinstance(sampler, ShardSampler):
            return self._batches(np.array(list(sampler), dtype=np.int64), 0)
        keys = list(sampler)  # (index, seed, epoch, position) from a resumed position on
        start = keys[0][3] if keys else 0
        indices = np.array([key[0] for key in keys], dtype=np.int64)
        if sampler.usable is not None:  # the dropped last partial batch
            indices = indices[: max(0, sampler.usable - start)]
        seed = sample_seed(sampler.seed, sampler.epoch, sampler.rank, start)
        return self._batches(indices, seed & 0x7FFFFFFF)

    def _batches(self, indices: np.ndarray, seed: int) -> Iterator[Batch]:
        """The batches over ``indices``, rebuilding the pipeline after a file that fails."""
        files = indices.copy()  # the file read at each position (a training substitute)
        unreadable = np.zeros(len(indices), dtype=bool)  # positions marked (evaluation)
        for position in range(len(files)):
            if int(files[position]) in self.failed:
                self._replace(files, unreadable, indices, position)
        done = 0
        while done < len(files):
            base = done  # positions count from here in this pipeline
            paths = [str(self.dataset.paths[int(i)]) for i in files[base:]]
            iterator = self._outputs(paths, seed + base)
            while True:
                try:
                    out = next(iterator)
                except StopIteration:
                    return
                except RuntimeError as error:
                    self._recover(files, unreadable, indices, done, error)
                    break
                positions = out["positions"].view(-1).cpu().numpy().astype(np.int64) + base
                yield self._batch(out["images"], positions, files, unreadable, indices)
                done += len(positions)

    def _outputs(self, paths: list[str], seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """DALI's outputs over ``paths``; built on the first ``next``, so that a failure while
        building or in the first batch reaches the caller there too."""
        plugin = dali().plugin.pytorch
        try:
            with warnings.catch_warnings():  # DALI's own deprecated aliases in auto_aug
                warnings.simplefilter("ignore", DeprecationWarning)
                pipeline = build(
                    paths,
                    self.preprocessing,
                    self.augment,
                    self.batch_size,
                    self.device_id,
                    self.threads,
                    seed,
                )
                pipeline.build()  # loads DALI's libraries: an install problem shows here
        except RuntimeError as error:
            raise DataError(
                printable(f"DALI could not start ({dali_cause(error)}); check the install")
            ) from error
        outputs = plugin.DALIGenericIterator(
            [pipeline],
            ["images", "positions"],
            reader_name="reader",
            last_batch_policy=plugin.LastBatchPolicy.PARTIAL,
        )
        for out in outputs:
            yield out[0]

    def _batch(
        self,
        images: torch.Tensor,
        positions: np.ndarray,
        files: np.ndarray,
        unreadable: np.ndarray,
        indices: np.ndarray,
    ) -> Batch:
        chosen = files[positions]
        labels = np.asarray(self.dataset.labels)[chosen].astype(np.int64)
        marked = unreadable[positions]
        if marked.any():  # evaluation: the file's own index, a blank image, ignored by metrics
            chosen = np.where(marked, indices[positions], chosen)
            labels[marked] = UNREADABLE
            images[torch.from_numpy(marked).to(images.device)] = 0
        return images, torch.from_numpy(labels), torch.from_numpy(chosen)

    def _recover(
        self,
        files: np.ndarray,
        unreadable: np.ndarray,
        indices: np.ndarray,
        done: int,
        error: RuntimeError,
    ) -> None:
        """Find the files of the batches in flight that cannot be decoded, name and count
        them and apply the rules of the CPU path; raise when none of them is at fault."""
        window = range(done, min(len(files), done + 4 * self.batch_size))
        culprits = 0
        for position in window:
            index = int(files[position])
            reason = self.failed.get(index) or undecodable(str(self.dataset.paths[index]))
            if reason is None:
                continue
            self.failed[index] = reason
            self._replace(files, unreadable, indices, position)
            culprits += 1
        if culprits == 0:
            message = dali_cause(error)
            paths = self.dataset.paths
            first, last = paths[int(files[done])], paths[int(files[window[-1]])]
            raise DataError(
                printable(
                    f"DALI failed on a batch from {first} to {last}, which the CPU decoder reads "
                    f"({message}); train with --data.decode cpu"
                )
            ) from error

    def _replace(
        self, files: np.ndarray, unreadable: np.ndarray, indices: np.ndarray, position: int
    ) -> None:
        """Apply the CPU path's rule to the failed file at ``position``."""
        index = int(files[position])
        self.dataset.count_failure()
        named = printable(f"{self.dataset.paths[index]}: {self.failed[index]}")
        if self.augment is None:
            log.warning("unreadable image %s", named)
            unreadable[position] = True
            usable = [int(i) for i in files if int(i) not in self.failed]
            if not usable:
                raise DataError(f"no image of {self.dataset.paths[index]}'s split could be decoded")
            files[position] = usable[0]  # read in its place; its result is discarded
            return
        log.warning("replacing unreadable image %s", named)
        count = len(self.dataset)
        for attempt in range(1, MAX_REPLACEMENTS + 1):
            if (index + attempt) % count not in self.failed:
                files[position] = (index + attempt) % count
                return
        raise DataError(
            printable(
                f"{MAX_REPLACEMENTS + 1} consecutive training images DALI cannot decode, from "
                f"{self.dataset.paths[index]} on (the files changed after the scan?); use "
                "--data.decode cpu"
            )
        )


class DaliTrainLoader(DaliLoader):
    """The training :class:`DaliLoader`, with the CPU path's exact resume (order and sample
    exact; DALI's augmentation draws are its own, so a resumed epoch augments differently).

    Args:
        resume: the epoch, progress and generator states to resume from.
        **kwargs: as :class:`DaliLoader`; its sampler is ``resume.sampler``.
    """

    def __init__(self, *, resume: EpochResume, **kwargs: Any) -> None:
        super().__init__(sampler=resume.sampler, **kwargs)
        self.resume = resume

    @override
    def __iter__(self) -> Iterator[Batch]:
        self.resume.begin()
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """The epoch and the number of this rank's samples already trained on."""
        return self.resume.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the consumed samples if the run resumes inside the same epoch."""
        self.resume.load_state_dict(state)
