"""``ImageFolderDataModule``: a folder of images in, normalised batches out.

Loaders for an image-folder data module: sharded samplers, exact resume, normalisation on
the device. :class:`~classifier.datamodule.ImageFolderDataModule` reads the folders and builds the
datasets; this base turns them into loaders (as TorchGeo's base data modules do).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from classifier import resume
from classifier.checked_values import MAX_SIDE, MIN_IMAGE_SIZE
from classifier.dali import Augment, DaliLoader, DaliTrainLoader, dali
from classifier.file_io import rank_zero_run_dir
from classifier.folder_splits import FolderSplits, Processes, relative, write_manifest
from classifier.health import FitHealth, report_excluded, report_shared
from classifier.image_dataset import ImageCache, ImageDataset, build_caches
from classifier.losses import class_weights
from classifier.resume import EpochResume, ResumableLoader, consumed_batches, next_epoch
from classifier.sampler import EpochSampler, ShardSampler
from classifier.sources import Source, SourceKind
from classifier.splits import DataError, Paths, Split, Texts
from classifier.transforms import (
    AutoAugment,
    Interpolation,
    Preprocessing,
    eval_transform,
    normalize,
    split_transform,
)

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
        )
        if self.hparams["decode"] == "dali":
            return DaliTrainLoader(resume=resume, **self._dali_kwargs("train"))
        return ResumableLoader(
            resume=resume, drop_last=drop_last, **self._loader_kwargs("train", self.batch_size)
        )

    def _dali_kwargs(self, name: str) -> dict[str, Any]:
        """What :class:`~classifier.dali.DaliLoader` takes for split ``name``, but its
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


Stage = Literal["train", "val", "test", "predict"]


class ImageFolderDataModule(LoaderDataModule):
    """Images from ``data_dir/{train,val,test}/<class>/*``, from ``annotations.jsonl`` files or
    from CSV manifests; classes are the folders (or sorted labels) of ``train``.

    Args:
        data_dir: folder holding ``train/``, ``val/`` (or ``valid/``) and optionally ``test/``,
            each with one sub-folder per class (images may sit in nested folders below it) or
            with ``annotations.jsonl`` files at any depth; or holding CSV manifests
            (``train.csv``, ``val.csv``, ... or one with a ``split`` column); or one manifest.
        source: ``folders``, ``jsonl`` or ``csv``; ``auto`` detects it from ``data_dir``
            (JSONL when ``train/`` or a folder in it holds ``annotations.jsonl``).
        label_key: the label's JSONL key or CSV column; ``None``: ``suffix`` (JSONL), ``label``
            (CSV). Rows without a usable image or label are excluded and listed like
            unreadable images (``strict`` stops instead).
        image_size: side in pixels of the square crop the network sees.
        crop_pct: evaluation resizes the shorter side to ``image_size / crop_pct`` and then
            centre-crops; ``None`` takes the backbone's pretrained value (0.875 for most).
        interpolation: resize interpolation; ``None`` takes the backbone's.
        mean: per-channel RGB mean for values in [0, 1]; ``None`` takes the backbone's
            pretrained statistics (ImageNet when it has none).
        std: per-channel RGB standard deviation; ``None`` as for ``mean``.
        batch_size: training images per batch and process.
        eval_batch_size: validation/test/predict batch size; ``None`` uses ``2 * batch_size``.
        num_workers: loader processes per training process (the train and val loaders keep
            theirs between epochs); ``None`` uses ``min(8, CPU count)``.
        pin_memory: page-locked host memory for faster GPU copies; ``None`` enables it when
            training on a GPU.
        decode: ``cpu`` decodes and augments in the loader workers (torchvision); ``dali``
            decodes and augments the train and val batches with NVIDIA DALI: on the GPU
            (nvJPEG) when training on one, else with DALI's CPU operators. Test and predict
            keep the CPU path (the ONNX contract's). Needs ``pip install 'classifier[dali]'``
            and ``scan``; refuses GIF and TIFF files in train/ and val/.
        scale: RandomResizedCrop's range of the crop area as a fraction of the image.
        hflip: probability of a horizontal flip (set 0 for images whose side matters).
        color_jitter: strength of brightness/contrast/saturation jitter; 0 disables.
        auto_augment: ``randaugment`` or ``trivialaugment`` policies, or ``none``.
        random_erasing: probability of erasing a random rectangle (filled with the mean).
        class_weights: loss weight per class: ``none``, ``auto`` (inverse frequency of the
            train counts, mean 1) or an explicit list in class order.
        sampler: ``weighted`` draws training images with probability inversely proportional to
            their class size (with replacement); ``none`` shuffles.
        predict_dir: folder of images for ``classifier predict`` (any layout; images inside a
            folder named like a class keep that class as ground truth).
        class_names: the class order; filled from the checkpoint when testing or predicting
            (checked against ``train/`` when it exists). ``None`` lists ``train/``.
        strict: stop with an error listing unreadable files instead of excluding them.
        scan: decode every file once before training to exclude unreadable ones (cached).
        duplicate_bits: images whose 64-bit perceptual hashes differ in at most this many bits
            are near duplicates in the data health check at fit start (``data_health.json``:
            copies across splits, under two classes, within a class); -1 turns it off. Needs
            ``scan``.
        on_leakage: ``warn`` or ``error`` when a val/ or test/ image is also in train/ (an
            exact or near copy).
        val_fraction: without a ``val/`` folder, hold out this share of each class of
            ``train/`` for validation (seeded, duplicates kept on one side; saved as
            ``split.csv`` and in checkpoints, reused on resume, ``validate`` and ``test``).
        seed: seed of the training order and of each image's augmentation (epoch ``e`` draws
            with ``seed`` and ``e``); ``None`` takes the run's ``seed_everything`` (``0`` when
            used from Python without one).
        backbone: the timm model name whose pretrained preprocessing fills ``crop_pct``,
            ``interpolation``, ``mean`` and ``std`` when they are ``None`` (the command line
            links it from ``model.model_name``; from Python, pass the model's name).
        cache_images: ``ram`` keeps train and val images decoded (before augmentation) in
            memory the loader workers share, filled in the first epoch; training images are
            kept at twice ``image_size`` on the shorter side, so crops under half the image's
            side see less detail than the file has. ``none`` decodes every epoch.
        cache_images_gb: most memory (GB, per process) the cache may take; a larger estimate
            stops before training.
    """

    def __init__(
        self,
        data_dir: str = "data",
        source: SourceKind = "auto",
        label_key: str | None = None,
        image_size: int = 224,
        crop_pct: float | None = None,
        interpolation: Interpolation | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        decode: Literal["cpu", "dali"] = "cpu",
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        auto_augment: AutoAugment = "none",
        random_erasing: float = 0.0,
        class_weights: Literal["none", "auto"] | list[float] = "none",
        sampler: Literal["none", "weighted"] = "none",
        predict_dir: str | None = None,
        class_names: list[str] | None = None,
        strict: bool = False,
        scan: bool = True,
        duplicate_bits: int = 4,
        on_leakage: Literal["warn", "error"] = "warn",
        val_fraction: float = 0.0,
        seed: int | None = None,
        backbone: str | None = None,
        cache_images: Literal["none", "ram"] = "none",
        cache_images_gb: float = 8.0,
    ) -> None:
        super().__init__()
        if not -1 <= duplicate_bits < 64:
            raise DataError(f"duplicate_bits must be -1 (off) or 0-63, got {duplicate_bits}")
        if not MIN_IMAGE_SIZE <= image_size <= MAX_SIDE:  # under 8 px, resizing breaks
            raise DataError(
                f"image_size must be {MIN_IMAGE_SIZE} to {MAX_SIDE} pixels, got {image_size}"
            )
        if decode == "dali" and cache_images != "none":
            raise DataError("data.cache_images needs data.decode: cpu (DALI decodes on its own)")
        if decode == "dali" and not scan:
            raise DataError(
                "data.decode: dali needs data.scan: true (the scan checks each file's format "
                "and pixel count, which DALI's decoders do not)"
            )
        # class_names belongs to the model's hyper-parameters (it is linked from here).
        self.save_hyperparameters(ignore=["class_names"])
        self.data_dir = Path(data_dir)
        self.source = Source(self.data_dir, source, label_key)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self._class_names = class_names
        self.datasets: dict[str, ImageDataset] = {}
        #: Decoded train and val images in shared memory (``cache_images: ram``).
        self.caches: dict[str, ImageCache] = {}
        self.preprocessing: Preprocessing | None = None
        self.train_sampler: EpochSampler | None = None
        self._mean_std: tuple[torch.Tensor, torch.Tensor] | None = None
        self._folder: FolderSplits | None = None
        self._health: FitHealth | None = None
        #: Whether the fits now running are the finders' (:meth:`finders`), not the run's.
        self._finding = False
        #: Generator states of the checkpoint a resumed fit starts from.
        self._rng_states: dict[str, Any] | None = None
        #: Failures of each split's dataset already reported by :meth:`new_failures`.
        self._reported_failures: dict[str, int] = {}
        #: ``train`` with the evaluation transform (:meth:`eval_dataset`).
        self._train_as_evaluated: ImageDataset | None = None

    @property
    def folder(self) -> FolderSplits:
        """The splits of ``data_dir`` (read, scanned and held out on first use)."""
        if self._folder is None:
            self._folder = FolderSplits(self.source, self.hparams, self.class_names)
        return self._folder

    @property
    def health(self) -> FitHealth:
        """The data health check of a fit, over the folder's splits (created on first use)."""
        if self._health is None:
            folder, hp = self.folder, self.hparams
            enabled = hp["duplicate_bits"] >= 0 and hp["scan"]
            self._health = FitHealth(
                folder.health, enabled, folder.get, folder.decoded, lambda: folder.cache
            )
        return self._health

    @property
    @override
    def splits(self) -> dict[str, Split]:
        """The splits read so far, by name."""
        return self.folder.splits

    @property
    def excluded(self) -> dict[str, dict[str, str]]:
        """``{split: {path: reason}}`` of files the pre-scan excluded."""
        return self.folder.excluded

    @property
    def class_names(self) -> list[str]:
        """Class names in label order: given, or the sorted folders (labels) of ``train``."""
        if self._class_names is None:
            self._class_names = self.source.class_names()
        return self._class_names

    @property
    @override
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def resolve_preprocessing(self) -> Preprocessing:
        """Evaluation preprocessing from the arguments, else the backbone's pretrained config."""
        hp = self.hparams
        return Preprocessing.for_backbone(
            hp["backbone"],
            hp["image_size"],
            hp["crop_pct"],
            hp["interpolation"],
            hp["mean"],
            hp["std"],
        )

    @override
    def setup(self, stage: str) -> None:
        """Read the splits the stage needs, pre-scan them and build the datasets."""
        if self.hparams["decode"] == "dali" and stage in ("fit", "validate"):
            dali()  # a missing install, before the scan
        self.preprocessing = self.resolve_preprocessing()
        if self._class_names is not None:
            self.source.check_classes(self._class_names)
        if self.trainer is not None:
            strategy = self.trainer.strategy
            self.folder.processes = Processes(self.trainer.local_rank == 0, strategy.barrier)
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}
        for name in wanted.get(stage, ["predict"]):
            if self.folder.get(name) is None:
                self.folder.root(name)  # the missing folder, as an error saying how
        run = not self._finding  # the finders' fits leave the run's reports to the run
        if run and "val" in self.splits and self.folder.unsplit is not None:
            self._write_manifest()
        checked = run and stage == "fit" and self.health.start(self.trainer)
        self._build_datasets()
        if self.excluded and (run or self.hparams["strict"]):  # strict stops before the finders
            rows = self.source.kind != "folders"
            report_excluded(
                self.excluded, self.hparams["strict"], rank_zero_run_dir(self.trainer), rows
            )
        if run and not checked:
            report_shared(self.splits)

    def split(self, name: Stage) -> Split | None:
        """Split ``name``, read and scanned on first use; ``None`` when its folder is absent."""
        return self.folder.get(name)

    def _write_manifest(self) -> None:
        """``split.csv`` in the run folder (rank 0), when a validation share was held out."""
        folder = rank_zero_run_dir(self.trainer)
        if folder is not None:
            write_manifest(
                folder / "split.csv", self.splits["train"], self.splits["val"], self.class_names
            )

    def _build_datasets(self) -> None:
        assert self.preprocessing is not None
        hp = self.hparams
        if hp["cache_images"] == "ram":  # train and val, before their datasets are made
            new = {n: s for n, s in self.splits.items() if n not in self.datasets}
            self.caches.update(build_caches(new, self.preprocessing, hp["cache_images_gb"]))
        for name, split in self.splits.items():
            if name in self.datasets:
                continue
            transform = split_transform(name, self.preprocessing, hp)
            self.datasets[name] = ImageDataset(
                split.paths,
                split.labels,
                transform,
                name == "train",
                split.unusable,
                self.health.sink(name),  # the first epoch's workers hash what they decode
                self.caches.get(name),
            )
            if name == "train":
                self._train_as_evaluated = None

    def files(self, split: str) -> tuple[Paths, np.ndarray] | None:
        """The files of ``split`` and their labels (-1: unknown), after exclusions; read and
        scanned on first use; ``None`` when the split has no folder."""
        found = self.split(split)  # type: ignore[arg-type]
        return None if found is None else (found.paths, found.labels)

    def annotations(self, split: str) -> tuple[Texts, Texts] | None:
        """Each file's ``file:line`` and attributes (JSON) for rows of annotation files."""
        found = self.splits.get(split)
        if found is None or found.origins is None or found.attributes is None:
            return None
        return found.origins, found.attributes

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class in ``split`` (after exclusions)."""
        labels = torch.as_tensor(self.splits[split].labels, dtype=torch.long)
        return [int(c) for c in torch.bincount(labels, minlength=self.num_classes)]

    def eval_image(self, split: str, index: int) -> torch.Tensor:
        """Image ``index`` of ``split`` resized and cropped as evaluation sees it (``uint8``
        ``3xHxW``; a file that cannot be read any more is a blank image)."""
        return self.eval_dataset(split)[index][0]

    @override
    def eval_dataset(self, split: str) -> ImageDataset:
        """``split`` with the evaluation transform (the training split's own augments)."""
        dataset = self.datasets[split]
        if not dataset.substitute:
            return dataset
        if self._train_as_evaluated is None:
            assert self.preprocessing is not None
            train = self.splits["train"]
            transform = eval_transform(self.preprocessing)
            cache = self.caches.get("train")
            train_eval = ImageDataset(train.paths, train.labels, transform, cache=cache)
            self._train_as_evaluated = train_eval
        return self._train_as_evaluated

    def loss_weights(self) -> torch.Tensor | None:
        """Per-class loss weights from ``class_weights``, or ``None`` for uniform."""
        setting = self.hparams["class_weights"]
        counts = self.class_counts("train") if setting == "auto" else []
        return class_weights(setting, counts, self.class_names)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The random generators' states (for exact resume) and the held-out validation
        images (``val_fraction``), saved in every checkpoint."""
        state: dict[str, Any] = {"rng_states": resume.capture(), "seed": self.hparams["seed"] or 0}
        unsplit = self.folder.unsplit
        if unsplit is not None and "val" in self.splits:
            state["held_out"] = [relative(p, unsplit.root) for p in self.splits["val"].paths]
        return state

    @contextmanager
    def finders(self) -> Iterator[None]:
        """The fits inside are the batch-size and learning-rate finders' (``tune.py``), on a
        scratch trainer whose folder is deleted: their ``setup`` neither starts the data health
        check (so no hook of theirs finishes it) nor writes or reports anything for the run
        folder; the real fit after them does, as without the finders. On leaving, generator
        states their checkpoint restores handed over are dropped: they must not decide the real
        run's random draws."""
        self._finding = True
        try:
            yield
        finally:
            self._finding = False
            self._rng_states = None

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's generator states for the training loader to restore; hold out
        the checkpoint's validation images instead of a new draw."""
        self._rng_states = state_dict.get("rng_states")
        if "seed" in state_dict and state_dict["seed"] != (self.hparams["seed"] or 0):
            if self.trainer is not None and self.trainer.state.fn == "fit":
                warnings.warn(
                    f"data.seed {self.hparams['seed']} differs from the checkpoint's "
                    f"{state_dict['seed']}; the resumed run keeps the checkpoint's order",
                    stacklevel=2,
                )
            self.hparams["seed"] = state_dict["seed"]
        names = state_dict.get("held_out")
        if names is None or self.folder.unsplit is None:
            return
        self.folder.held_out_again(names)
        self._write_manifest()
        for name in ("train", "val"):
            self.datasets.pop(name, None)
        self._build_datasets()
