"""The torch ``Dataset`` over a :class:`~classifier.folder.Split`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from classifier.images import load_rgb

log = logging.getLogger(__name__)

#: How many following samples are tried in place of one that fails to load.
_MAX_REPLACEMENTS = 10

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

    A file that fails to load (it passed the pre-scan but changed since, say) is logged and
    replaced by the next loadable sample, so one bad file never stops a run. With a
    ``(index, seed, epoch, position)`` key the random augmentation is seeded from it, so it is
    the same whichever worker loads it and after a resume.

    Args:
        paths: image files.
        labels: class index per file (-1 when unknown).
        transform: applied to the ``uint8`` tensor.
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.failures = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: SampleKey) -> Sample:
        if isinstance(key, int):
            return self._load(key)
        index, seed, epoch, position = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(seed, epoch, index, position))
            return self._load(index)

    def _load(self, index: int) -> Sample:
        for attempt in range(_MAX_REPLACEMENTS + 1):
            current = (index + attempt) % len(self.paths)
            try:
                image = load_rgb(self.paths[current])
            except Exception as error:  # decoder errors vary by format
                self.failures += 1
                log.warning("skipping unreadable image %s: %s", self.paths[current], error)
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, self.labels[current], current
        raise RuntimeError(
            f"{_MAX_REPLACEMENTS + 1} consecutive images failed to load from "
            f"{self.paths[index]}; is the data folder still mounted?"
        )
