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


class ImageDataset(Dataset[Sample]):
    """Images as ``(uint8 3xHxW tensor, label, index)``.

    A file that fails to load (it passed the pre-scan but changed since, say) is logged and
    replaced by the next loadable sample, so one bad file never stops a run.

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

    def __getitem__(self, index: int) -> Sample:
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
