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
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from classifier.dali_pipeline import Augment, build, dali
from classifier.image_dataset import UNREADABLE, ImageDataset, sample_seed
from classifier.resume import EpochResume
from classifier.sampler import EpochSampler, ShardSampler
from classifier.splits import DataError
from classifier.tensor_decode import load_rgb
from classifier.text import printable
from classifier.transforms import Preprocessing

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
