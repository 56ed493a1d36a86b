"""Loaders for an image-folder data module: sharded samplers, exact resume, normalisation on
the device. :class:`~classifier.datamodule.ImageFolderDataModule` reads the folders and builds the
datasets; this base turns them into loaders (as TorchGeo's base data modules do)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from classifier.dali_loader import DaliLoader, DaliTrainLoader
from classifier.dali_pipeline import Augment
from classifier.image_dataset import ImageDataset
from classifier.resume import EpochResume, ResumableLoader, consumed_batches, next_epoch
from classifier.sampler import EpochSampler, ShardSampler
from classifier.splits import Split
from classifier.transforms import Preprocessing, normalize

#: The weights' type of Lightning's ``*-true`` precisions (half ones for this data module's
#: own use: the command refuses them, see :func:`classifier.preflight.refuse_half_weights`).
TRUE_PRECISION = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}


class LoaderDataModule(pl.LightningDataModule):
    """The loaders of :class:`~classifier.datamodule.ImageFolderDataModule` (see its arguments)."""

    datasets: dict[str, ImageDataset]
    batch_size: int
    eval_batch_size: int
    num_workers: int
    preprocessing: Preprocessing | None
    train_sampler: EpochSampler | None
    _rng_states: dict[str, Any] | None
    _mean_std: tuple[torch.Tensor, torch.Tensor] | None
    _reported_failures: dict[str, int]

    @property
    def splits(self) -> dict[str, Split]:
        """The splits read so far, by name (the subclass reads them)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (the subclass knows them)."""
        raise NotImplementedError

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader_kwargs(self, name: str, batch_size: int) -> dict[str, Any]:
        workers = self.num_workers
        pin = self.hparams["pin_memory"]
        if pin is None:
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return {
            "dataset": self.datasets[name],
            "batch_size": batch_size,
            "num_workers": workers,
            "pin_memory": pin,
            "persistent_workers": workers > 0 and name in ("train", "val"),  # reused each epoch
            "prefetch_factor": 4 if workers > 0 else None,
            # Its own generator: creating iterators does not consume the global RNG, whose
            # state is restored on resume.
            "generator": torch.Generator().manual_seed(0),
        }

    def _per_rank(self) -> int:
        """Training samples each process draws per epoch."""
        return -(-len(self.splits["train"]) // self._rank()[1])

    def _drop_last(self) -> bool:
        """Drop the last partial training batch (as timm's and torchvision's reference scripts
        do): a final batch of one image breaks BatchNorm. Kept when it is the only batch."""
        return self._per_rank() >= self.batch_size

    def train_batches_per_epoch(self) -> int:
        """Training batches each process runs per epoch (before ``limit_train_batches``)."""
        if self._drop_last():
            return self._per_rank() // self.batch_size
        return -(-self._per_rank() // self.batch_size)

    @override
    def train_dataloader(self) -> Iterable[Any]:
        """Shuffled or weighted, sharded across processes; the last partial batch is dropped."""
        rank, world = self._rank()
        labels = torch.tensor(self.splits["train"].labels)
        weights = None
        if self.hparams["sampler"] == "weighted":
            counts = torch.bincount(labels, minlength=self.num_classes).double()
            weights = (1.0 / counts.clamp(min=1))[labels]
        seed = int(self.hparams["seed"] or 0)
        if self.trainer is not None:  # one draw for all ranks, whatever seed each was given
            seed = int(self.trainer.strategy.broadcast(seed, src=0))
        self.train_sampler = EpochSampler(len(labels), weights, seed, rank, world)
        states, self._rng_states = self._rng_states, None  # restored once, by this loader
        drop_last = self._drop_last()
        if drop_last:
            self.train_sampler.usable = self.train_batches_per_epoch() * self.batch_size
        resume = EpochResume(
            self.train_sampler,
            self.batch_size,
            progress=lambda: consumed_batches(self.trainer),
            epoch=lambda: next_epoch(self.trainer),
            rng_states=states,
            before_epoch=lambda epoch: self.finish_health_check() if epoch > 0 else None,
        )
        if self.hparams["decode"] == "dali":
            return DaliTrainLoader(resume=resume, **self._dali_kwargs("train"))
        return ResumableLoader(
            resume=resume, drop_last=drop_last, **self._loader_kwargs("train", self.batch_size)
        )

    def _dali_kwargs(self, name: str) -> dict[str, Any]:
        """What :class:`~classifier.dali_loader.DaliLoader` takes for split ``name``, but its
        sampler."""
        assert self.preprocessing is not None
        hp = self.hparams
        augment = None
        if name == "train":
            augment = Augment(
                hp["scale"], hp["hflip"], hp["color_jitter"], hp["auto_augment"],
                hp["random_erasing"],
            )  # fmt: skip
        device = None if self.trainer is None else self.trainer.strategy.root_device
        device_id = device.index or 0 if device is not None and device.type == "cuda" else None
        return {
            "dataset": self.datasets[name],
            "batch_size": self.batch_size if name == "train" else self.eval_batch_size,
            "preprocessing": self.preprocessing,
            "augment": augment,
            "device_id": device_id,
            "threads": self.num_workers or 1,
        }

    def _eval_loader(self, name: str) -> Iterable[Any]:
        rank, world = self._rank()
        sampler = ShardSampler(len(self.datasets[name]), rank, world)
        if name == "val" and self.hparams["decode"] == "dali":
            return DaliLoader(sampler=sampler, **self._dali_kwargs(name))
        return DataLoader(sampler=sampler, **self._loader_kwargs(name, self.eval_batch_size))

    @override
    def val_dataloader(self) -> Iterable[Any]:
        """In file order, each image on exactly one process."""
        return self._eval_loader("val")

    @override
    def test_dataloader(self) -> Iterable[Any]:
        """In file order, each image on exactly one process."""
        return self._eval_loader("test")

    @override
    def predict_dataloader(self) -> Iterable[Any]:
        """In file order, each image on exactly one process."""
        return self._eval_loader("predict")

    def finish_health_check(self) -> None:
        """Complete a data health check that waits for the first epoch (the subclass's)."""

    def eval_loader(self, split: str, indices: Sequence[int] | None = None) -> DataLoader[Any]:
        """Every image of ``split`` (or those at ``indices``) on this process (unsharded), as
        evaluation sees it."""
        kwargs = self._loader_kwargs(split, self.eval_batch_size)
        dataset: Any = self.eval_dataset(split)
        if indices is not None:
            dataset = Subset(dataset, list(indices))
        kwargs.update(dataset=dataset, persistent_workers=False)
        return DataLoader(**kwargs)

    def eval_dataset(self, split: str) -> ImageDataset:
        """``split`` with the evaluation transform (the subclass builds them)."""
        raise NotImplementedError

    def drawn(self) -> torch.Tensor:
        """The training images this process trained on this epoch (indices into ``train``)."""
        if self.train_sampler is None:
            return torch.empty(0, dtype=torch.long)
        return self.train_sampler.trained

    def new_failures(self, name: str) -> int:
        """Files of split ``name`` that failed to load since the last call (this process)."""
        dataset = self.datasets.get(name)
        if dataset is None:
            return 0
        total = dataset.failures
        new = total - self._reported_failures.get(name, 0)
        self._reported_failures[name] = total
        return new

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise ``uint8`` images on the device they were sent to, in the weights' type
        under ``64-true`` (the command refuses ``bf16-true`` and ``16-true``)."""
        images, labels, indices = batch
        if images.dtype == torch.uint8:
            assert self.preprocessing is not None
            if self._mean_std is None or self._mean_std[0].device != images.device:
                self._mean_std = self.preprocessing.mean_std(images.device)
            images = normalize(images, *self._mean_std)
        precision = str(getattr(self.trainer, "precision", ""))
        if images.is_floating_point() and precision in TRUE_PRECISION:
            images = images.to(TRUE_PRECISION[precision])
        return images, labels, indices
