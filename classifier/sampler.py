"""Rank-aware samplers whose draws are a function of (seed, epoch) alone.

Lightning replaces a custom sampler with a ``DistributedSampler`` wrapper under DDP, which
re-shuffles and pads it and hides what was drawn. These samplers shard themselves instead
(the shipped configs set ``use_distributed_sampler: false``): every rank computes the same
global draw from the same seed and takes a disjoint slice, so a weighted draw stays one draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from typing_extensions import override

#: What the training sampler yields: (dataset index, seed, epoch, position in the epoch).
#: The dataset seeds each sample's augmentation from it, so augmentation does not depend on
#: which worker loads the sample or on the RNG history before a resume.
Key = tuple[int, int, int, int]


class EpochSampler(Sampler[Key]):
    """Training sampler: a seeded permutation, or a weighted draw with replacement.

    Args:
        num_samples: size of the dataset.
        weights: per-sample weights for a weighted draw with replacement; ``None`` shuffles.
        seed: base seed; epoch ``e`` draws with ``seed + e`` so resume redraws the same epoch.
        rank: this process's rank.
        world_size: number of processes; the draw is padded to a multiple of it so that every
            rank runs the same number of steps.
    """

    def __init__(
        self,
        num_samples: int,
        weights: Sequence[float] | torch.Tensor | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("EpochSampler needs at least one sample")
        self.num_samples = num_samples
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        #: (epoch, samples of this rank to skip) for the first iteration after a resume.
        self.resume_at: tuple[int, int] | None = None
        #: The dataset indices this rank drew in the current epoch, in order.
        self.drawn: torch.Tensor = torch.empty(0, dtype=torch.long)
        #: How many of its draws this rank trains on per epoch (the loader may drop a last
        #: partial batch); ``None``: all.
        self.usable: int | None = None

    @property
    def trained(self) -> torch.Tensor:
        """The drawn indices this rank trains on this epoch (without a dropped last batch)."""
        return self.drawn if self.usable is None else self.drawn[: self.usable]

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each training epoch."""
        self.epoch = epoch

    def global_draw(self) -> torch.Tensor:
        """The whole epoch's draw (all ranks), padded to a multiple of ``world_size``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.multinomial(
                self.weights, self.num_samples, replacement=True, generator=generator
            )
        padding = -len(order) % self.world_size
        return torch.cat([order, order[:padding]]) if padding else order

    @override
    def __iter__(self) -> Iterator[Key]:
        start = 0
        if self.resume_at is not None:
            self.epoch, start = self.resume_at
            self.resume_at = None
        self.drawn = self.global_draw()[self.rank :: self.world_size]
        indices = self.drawn.tolist()
        keys = [(index, self.seed, self.epoch, pos) for pos, index in enumerate(indices)]
        return iter(keys[start:])

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def resume(self, epoch: int, consumed: int) -> None:
        """Continue after a checkpoint taken when ``consumed`` samples of ``epoch`` were used.

        Lightning creates the first iterator of a resumed run before it calls ``set_epoch``,
        so the epoch to draw is pinned here. An epoch ends after :attr:`usable` samples when the
        loader drops its last partial batch.
        """
        if consumed >= (len(self) if self.usable is None else self.usable):
            self.resume_at = (epoch + 1, 0)
        else:
            self.resume_at = (epoch, consumed)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` takes indices ``r, r + w, ...`` with no padding.

    No image is duplicated, so metrics synchronised across ranks count each image exactly once.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size

    @override
    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))
