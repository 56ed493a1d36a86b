"""The torch ``Dataset`` over a :class:`~classifier.splits.Split`.

``data.cache_images: ram``: the train and val images held decoded in one shared buffer.

Each image is kept as decoded, before any random augmentation, so every epoch still draws new
crops and flips. Before caching, each image's stored size is read from its header and the total
is checked against ``data.cache_images_gb``; the buffer is then allocated once, in shared
memory, before the loader workers start, so they all fill and read the same bytes (not a copy
each). The first epoch decodes each file and stores it; later epochs read it back.

What is lost: a training image is kept with its shorter side at most
:data:`TRAIN_SIDE` x ``image_size`` (a validation image at the evaluation resize, which is
exact), so a RandomResizedCrop smaller than half the image's side is upsampled from the kept
pixels instead of taken from the full-size file. The first epoch's input is the same reduced
image, so an exact resume gives the same batches whether the cache was filled or not.

Reading one image file into an RGB ``uint8`` tensor, the same way everywhere.

Training, evaluation, prediction and the ONNX verification all call :func:`load_rgb`, so an
image of an unusual kind (CMYK, 16-bit, palette with transparency, rotated by EXIF) becomes the
same pixels in every one of them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F  # noqa: N812 (torchvision's name)
from typing_extensions import override

from classifier.errors import printable
from classifier.pil_decode import (
    ALLOWED_FORMATS,
    BACKGROUND,
    IMAGE_EXTENSIONS,
    check_pixels,
    decode_pil,
    is_image_file,
    read_file,
)
from classifier.splits import DataError, Split
from classifier.transforms import Preprocessing

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND",
    "IMAGE_EXTENSIONS",
    "check_pixels",
    "is_image_file",
    "jpeg_frame",
    "load_pil",
    "load_rgb",
]


def load_pil(source: Path | bytes) -> torch.Tensor:
    """Decode an image file (its path or its bytes) fully with PIL
    (:func:`~classifier.pil_decode.decode_pil`) into an RGB ``uint8`` ``3xHxW`` tensor
    (strict: a truncated file raises)."""
    return torch.from_numpy(decode_pil(source)).permute(2, 0, 1).contiguous()


def load_rgb(path: str | Path) -> torch.Tensor:
    """Read an image file as an RGB ``uint8`` tensor of shape ``3xHxW``.

    JPEGs are decoded by torchvision's libjpeg-turbo decoder (about twice as fast as PIL);
    everything else, and any JPEG that decoder refuses (CMYK, progressive oddities), goes through
    PIL with EXIF orientation applied, transparency composited on :data:`BACKGROUND`, and 16-bit
    data scaled to 8 bits. Every route reads the image's size from its header first and refuses
    a decompression bomb (:func:`check_pixels`) before decoding.

    Raises:
        OSError, ValueError, Image.DecompressionBombError: the file cannot be used.
    """
    path = Path(path)
    raw = read_file(path)  # the same size limit and non-blocking open on every route
    if path.suffix.lower() in _JPEG_SUFFIXES:
        from torchvision.io import ImageReadMode, decode_jpeg

        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        frame = jpeg_frame(raw)
        # No frame header, or CMYK/YCCK (PIL handles Adobe's colour inversion): PIL decodes.
        if frame is not None and frame[2] != 4:
            check_pixels(frame[1], frame[0], path)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image: torch.Tensor = decode_jpeg(
                        data, mode=ImageReadMode.RGB, apply_exif_orientation=True
                    )
                return image
            except (RuntimeError, ValueError):
                pass
    return load_pil(raw)


_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})

#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_frame(raw: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` from a JPEG's frame header, walking its segments (an EXIF
    thumbnail's own header is skipped with its segment); ``None`` if there is none."""
    if not raw.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            at += 2
            continue
        if marker < 0xC0:  # not a segment marker: the decoder may read this differently
            return None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if marker in _SOF_MARKERS and at + 10 <= len(raw):
            height = int.from_bytes(raw[at + 5 : at + 7], "big")
            width = int.from_bytes(raw[at + 7 : at + 9], "big")
            return height, width, raw[at + 9]
        at += 2 + length
    return None


#: A training image's shorter side is kept at most this many times ``image_size``.
TRAIN_SIDE = 2
#: EXIF orientations that swap width and height.
_TURNED = (5, 6, 7, 8)


def _reduced(height: int, width: int, side: int) -> tuple[int, int]:
    """The size torchvision's resize of the shorter side to ``side`` gives (unchanged when it
    is already that small)."""
    short, long = min(height, width), max(height, width)
    if short <= side:
        return height, width
    new_long = int(side * long / short)
    return (side, new_long) if height <= width else (new_long, side)


def stored_shape(path: Path, side: int) -> tuple[int, int]:
    """``(height, width)`` the cache keeps ``path`` at, from its header (``(0, 0)``: not kept)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112, 1) in _TURNED:
                width, height = height, width
    except Exception:  # unreadable now: decoded (and refused) as without a cache
        return 0, 0
    return _reduced(height, width, side)


class ImageCache:
    """Decoded images of one split in one shared ``uint8`` buffer.

    Args:
        shapes: ``(height, width)`` kept per image (``(0, 0)``: never kept).
        side: the shorter side images are reduced to before they are kept.
        interpolation: the resize's interpolation (the evaluation's).
    """

    def __init__(self, shapes: np.ndarray, side: int, interpolation: str) -> None:
        self.side = side
        self.interpolation = interpolation
        self.shapes = torch.as_tensor(shapes, dtype=torch.int64).reshape(-1, 2)
        sizes = 3 * self.shapes[:, 0] * self.shapes[:, 1]
        self.offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
        torch.cumsum(sizes, 0, out=self.offsets[1:])
        # Shared before the loader workers fork: they fill and read the same pages.
        self.buffer = torch.empty(int(self.offsets[-1]), dtype=torch.uint8).share_memory_()  # type: ignore[no-untyped-call]
        self.filled = torch.zeros(len(sizes), dtype=torch.bool).share_memory_()  # type: ignore[no-untyped-call]

    @property
    def nbytes(self) -> int:
        """Bytes the buffer holds."""
        return int(self.offsets[-1])

    def get(self, index: int) -> torch.Tensor | None:
        """Image ``index`` as kept (a copy), or ``None`` when it is not kept yet."""
        if not bool(self.filled[index]):
            return None
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        height, width = (int(v) for v in self.shapes[index])
        kept: torch.Tensor = self.buffer[start:end].view(3, height, width).clone()
        return kept

    def put(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """``image`` reduced as the cache keeps it, stored when its size is the one reserved
        (a file changed since, or an orientation the header hid, is simply not kept)."""
        height, width = _reduced(image.shape[-2], image.shape[-1], self.side)
        if (height, width) != (image.shape[-2], image.shape[-1]):
            mode = InterpolationMode(self.interpolation)
            image = F.resize(image, [self.side], interpolation=mode, antialias=True)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        if tuple(int(v) for v in self.shapes[index]) == tuple(image.shape[-2:]) and end > start:
            self.buffer[start:end] = image.reshape(-1)
            self.filled[index] = True
        return image


def build_caches(
    splits: Mapping[str, Split], pre: Preprocessing, limit_gb: float
) -> dict[str, ImageCache]:
    """One cache for each of ``train`` and ``val`` among ``splits`` (``train``: shorter side
    :data:`TRAIN_SIDE` x ``image_size``; ``val``: the evaluation resize), after checking their
    total size against ``limit_gb``.

    Raises:
        DataError: the estimate exceeds the limit (one line naming both).
    """
    sides = {"train": max(TRAIN_SIDE * pre.image_size, pre.resize_size), "val": pre.resize_size}
    paths = {n: s.paths for n, s in splits.items() if n in sides}
    if not paths:
        return {}
    shapes = {
        name: np.asarray([stored_shape(p, sides[name]) for p in files], np.int64).reshape(-1, 2)
        for name, files in paths.items()
    }
    total = sum(int((3 * s[:, 0] * s[:, 1]).sum()) for s in shapes.values())
    count = sum(len(s) for s in shapes.values())
    if total > limit_gb * 1e9:
        raise DataError(
            f"data.cache_images: ram needs {total / 1e9:.3g} GB for {count} images, over "
            f"data.cache_images_gb {limit_gb:g}: raise the limit or set data.cache_images none"
        )
    rank_zero_info(
        f"Caching {count} decoded images in RAM: {total / 1e9:.3g} GB (limit {limit_gb:g} GB); "
        f"training crops come from images kept at {sides['train']} px on the shorter side"
    )
    return {n: ImageCache(shapes[n], sides[n], pre.interpolation) for n in paths}


log = logging.getLogger(__name__)

#: How many following samples are tried in place of one that fails to load (training only).
_MAX_REPLACEMENTS = 10
#: The label of an evaluation or prediction sample whose file could not be read: metrics
#: ignore it (``ignore_index``) and predictions.csv marks its row ``unreadable``.
UNREADABLE = -2
#: Failure counters, one per loader worker (and one for the main process), so that workers
#: never race on one counter.
_COUNTER_SLOTS = 257

Sample = tuple[torch.Tensor, int, int]
#: A plain index (evaluation), or (index, seed, epoch, position) from ``EpochSampler``.
SampleKey = int | tuple[int, int, int, int]


def sample_seed(seed: int, epoch: int, index: int, position: int) -> int:
    """A well-mixed 63-bit seed for one draw of one sample."""
    value = (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D + position) & (2**63 - 1)
    value ^= value >> 29
    return (value * 0xBF58476D1CE4E5B9) & (2**63 - 1)


class HashSink(Protocol):
    """Where a dataset hands the images whose perceptual hash the data health check still
    needs (:class:`~classifier.health.HashSlots`): all the dataset knows of that check."""

    def wants(self, index: int) -> bool:
        """Whether image ``index`` still needs its hash."""
        ...

    def put(self, index: int, image: torch.Tensor) -> None:
        """Take image ``index`` as decoded (``uint8`` ``3xHxW``), in full."""
        ...


class ImageDataset(Dataset[Sample]):
    """Images as ``(uint8 3xHxW tensor, label, index)``.

    A file that fails to load (it passed the pre-scan but changed since, say) is logged with
    its path and counted in :attr:`failures` (across loader workers). In training
    (``substitute=True``) the next loadable sample takes its place, so one bad file never stops
    a run; everywhere else the sample comes back as a blank image labelled :data:`UNREADABLE`
    with its own index, so no file is counted twice or silently replaced by its neighbour.
    With a ``(index, seed, epoch, position)`` key the random augmentation is seeded from it,
    so it is the same whichever worker loads it and after a resume.

    Args:
        paths: image files.
        labels: class index per file (-1 when unknown).
        transform: applied to the ``uint8`` tensor.
        substitute: replace an unreadable file by the next readable one (training).
        unusable: indices the pre-scan found unusable: never decoded, always unreadable.
        hashes: where a loader worker hands each image it decodes whose perceptual hash is
            still wanted (the health check's first epoch); such an image is decoded from its
            file in full, not read from ``cache``.
        cache: decoded images kept in shared memory (``data.cache_images: ram``): read from
            there once kept; a decoded file is reduced as the cache keeps it and stored.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        substitute: bool = False,
        unusable: set[int] | frozenset[int] = frozenset(),
        hashes: HashSink | None = None,
        cache: ImageCache | None = None,
    ) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.substitute = substitute
        self.unusable = frozenset(unusable)
        self.hashes = hashes
        self.cache = cache
        # Shared memory: loader workers (forked or spawned) count into the same tensor.
        self._failures = torch.zeros(_COUNTER_SLOTS, dtype=torch.long)
        self._failures.share_memory_()  # type: ignore[no-untyped-call]

    @property
    def failures(self) -> int:
        """Files that failed to load so far, in this process and its loader workers."""
        return int(self._failures.sum())

    def count_failure(self) -> None:
        """Count one failed load (in this process or loader worker)."""
        worker = get_worker_info()
        self._failures[0 if worker is None else 1 + worker.id % (_COUNTER_SLOTS - 1)] += 1

    def __len__(self) -> int:
        return len(self.paths)

    @override
    def __getitem__(self, key: SampleKey) -> Sample:
        if isinstance(key, int):
            return self._load(key)
        index, seed, epoch, position = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(seed, epoch, index, position))
            return self._load(index)

    def _load(self, index: int) -> Sample:
        if index in self.unusable:  # named by the pre-scan already
            return self._unreadable(index)
        for attempt in range(_MAX_REPLACEMENTS + 1):
            current = (index + attempt) % len(self.paths)
            # An image still to be hashed is decoded in full (hashes compare full images).
            unhashed = self.hashes is not None and self.hashes.wants(current)
            kept = self.cache.get(current) if self.cache is not None and not unhashed else None
            if kept is not None:
                return self._transformed(kept, current)
            try:
                image = load_rgb(self.paths[current])
            except Exception as error:  # decoder errors vary by format
                self.count_failure()
                # Escaped here: this runs in loader workers, outside the command's console.
                named = printable(f"{self.paths[current]}: {error}")
                if not self.substitute:
                    log.warning("unreadable image %s", named)
                    return self._unreadable(index)
                log.warning("replacing unreadable image %s", named)
                continue
            if unhashed and self.hashes is not None:
                self.hashes.put(current, image)
            if self.cache is not None:
                image = self.cache.put(current, image)
            return self._transformed(image, current)
        raise RuntimeError(
            f"{_MAX_REPLACEMENTS + 1} consecutive images failed to load from "
            f"{self.paths[index]}; is the data folder still mounted?"
        )

    def _transformed(self, image: torch.Tensor, index: int) -> Sample:
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), index

    def _unreadable(self, index: int) -> Sample:
        """A blank image of the transform's output size, labelled :data:`UNREADABLE`."""
        blank = torch.zeros(3, 8, 8, dtype=torch.uint8)
        return (self.transform(blank) if self.transform else blank), UNREADABLE, index
