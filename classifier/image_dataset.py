"""The torch ``Dataset`` over a :class:`~classifier.splits.Split`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from typing_extensions import override

if TYPE_CHECKING:
    from classifier.image_cache import ImageCache

from classifier.perceptual_hash import phash_of
from classifier.scan_cache import UNHASHED
from classifier.tensor_decode import load_rgb
from classifier.text import printable

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
        phash: shared-memory perceptual hashes (one per file), where a loader worker writes the
            hash of each image it decodes whose entry is still
            :data:`~classifier.scan_cache.UNHASHED` (the health check's first epoch).
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
        phash: torch.Tensor | None = None,
        cache: ImageCache | None = None,
    ) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.substitute = substitute
        self.unusable = frozenset(unusable)
        self.phash = phash
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
            unhashed = self.phash is not None and int(self.phash[current]) == UNHASHED
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
            if unhashed and self.phash is not None:
                self.phash[current] = phash_of(image)
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
