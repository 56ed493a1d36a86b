"""Rank-aware samplers whose draws are a function of (seed, epoch) alone.

Lightning replaces a custom sampler with a ``DistributedSampler`` wrapper under DDP, which
re-shuffles and pads it and hides what was drawn. These samplers shard themselves instead
(the shipped configs set ``use_distributed_sampler: false``): every rank computes the same
global draw from the same seed and takes a disjoint slice, so a weighted draw stays one draw.

``SamplerDistribution``: what the training sampler actually drew, per class and epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import Sampler
from typing_extensions import override

from classifier.callback_contract import image_data
from classifier.figures import PLOT_TIME_SHARE, PlottingCallback, last_epoch, log_image
from classifier.figures import draw as render
from classifier.file_io import run_dir, unique_safe_names, write_json

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


def gather_drawn(drawn: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's drawn indices (all ranks draw the same number)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return drawn
    parts = [torch.empty_like(drawn) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, drawn)
    return torch.cat(parts)


def logged_shares(names: list[str], shares: dict[str, float]) -> dict[str, float]:
    """``{sampler/<column>: share}`` of each class, one column per class
    (:func:`~classifier.file_io.unique_safe_names`)."""
    columns = unique_safe_names(names)
    return {f"sampler/{c}": shares[n] for n, c in zip(names, columns, strict=True)}


class SamplerDistribution(PlottingCallback):
    """Compare the class distribution of ``train/`` with what the sampler drew each epoch.

    With ``sampler: weighted`` the drawn distribution should be much flatter than the folder's;
    with plain shuffling it equals it. Prints a table (first and last epoch), logs
    ``sampler/<class>`` (drawn share; a class name made safe, with ``_2`` when two names
    would share a column) to the logger, and writes ``sampler_distribution.json``
    (every epoch) and ``sampler_distribution.png`` (latest epoch, redrawn while that stays within
    ``plot_time_share`` of the run's time, and at the end of fit) into the run folder. Under DDP
    the draws of all processes are gathered first.

    Args:
        plot_time_share: the largest fraction of training wall time spent redrawing the chart
            (0: only at the end of fit; 1: every epoch).
    """

    def __init__(self, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        super().__init__(plot_time_share)
        self.epochs: list[dict[str, Any]] = []

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the epoch's draw (every rank) and report it (rank 0)."""
        data = image_data(trainer)
        device = (
            pl_module.device
            if trainer.world_size > 1 and pl_module.device.type == "cuda"
            else "cpu"
        )
        drawn = gather_drawn(data.drawn().to(device)).cpu()
        if not trainer.is_global_zero:
            return
        names = data.class_names
        train = data.files("train")
        assert train is not None, "fit has a train/ split"
        labels = torch.tensor(train[1])
        baseline = torch.bincount(labels, minlength=len(names)).double()
        effective = torch.bincount(labels[drawn], minlength=len(names)).double()
        record = {
            "epoch": trainer.current_epoch,
            "draws": int(effective.sum()),
            "baseline": dict(zip(names, (baseline / baseline.sum()).tolist(), strict=True)),
            "effective": dict(zip(names, (effective / effective.sum()).tolist(), strict=True)),
            "effective_counts": dict(zip(names, effective.long().tolist(), strict=True)),
        }
        self.epochs = [e for e in self.epochs if e["epoch"] != record["epoch"]] + [record]
        self._report(trainer, names, record)

    def _report(self, trainer: pl.Trainer, names: list[str], record: dict[str, Any]) -> None:
        folder = run_dir(trainer)
        write_json(folder / "sampler_distribution.json", self.epochs)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                logged_shares(names, record["effective"]),
                step=trainer.global_step,
            )
        series: dict[str, list[float]] = {
            "train/ folder": [record["baseline"][n] for n in names],
            "drawn": [record["effective"][n] for n in names],
        }
        title = f"Sampler: class shares drawn in epoch {record['epoch'] + 1}"
        step = trainer.global_step

        def draw() -> None:
            path = folder / "sampler_distribution.png"
            render("bar_chart", path, names, series, title, "share of images")
            log_image(trainer, "data/sampler_distribution", path, step)

        self.draws.request(trainer, "sampler", draw)
        if len(self.epochs) > 1 and not last_epoch(trainer, record["epoch"]):
            return  # the table is printed for the first and the last epoch; files every epoch
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Sampler, epoch {record['epoch'] + 1}")
        for column in ("class", "folder share", "drawn share", "drawn"):
            table.add_column(column, justify="right" if column != "class" else "left")
        for name in names:
            table.add_row(
                name,
                f"{record['baseline'][name]:.3f}",
                f"{record['effective'][name]:.3f}",
                str(record["effective_counts"][name]),
            )
        Console().print(table)

    @override
    def state_dict(self) -> dict[str, Any]:
        """Per-epoch records, kept across resume."""
        return {"epochs": self.epochs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.epochs = list(state_dict.get("epochs", []))
