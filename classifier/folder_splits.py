"""The splits of an image folder, as :class:`~classifier.datamodule.ImageFolderDataModule` uses
them: each read on first use and pre-scanned (through the cache), unusable files left out (kept,
marked, for ``predict``), a validation share held out of ``train/`` when asked, and the data
health check (:class:`~classifier.health.HealthCheck`) fed as they are read.

A validation split carved out of ``train/`` when the data has no ``val/`` folder.

The split is stratified (each class gives the same share, to within one image), seeded, and
keeps every group of duplicate images on one side, so no copy of a validation image is trained
on. It is written to ``split.csv`` in the run folder and carried in checkpoints, so a resumed run,
``validate`` and ``test`` use exactly the same images even if files were added since.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifier.dali import DALI_REFUSED
from classifier.errors import printable
from classifier.file_io import write_csv
from classifier.health import Hashes, HealthCheck, copy_groups, small_copies
from classifier.prescan import hash_files, scan_split
from classifier.scan_cache import UNHASHED, ScanCache
from classifier.sources import Source, read_predict
from classifier.splits import DataError, Split


def hold_out(
    labels: Sequence[int], groups: Sequence[Sequence[int]], fraction: float, seed: int
) -> list[int]:
    """Indices of a stratified, seeded validation share of ``labels``.

    Args:
        labels: class index of every training image.
        groups: indices that must stay together (duplicates); other images stand alone.
        fraction: share of each class to hold out (a class of two or more images gives at
            least one and keeps at least one).
        seed: seed of the draw.
    """
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    target = {c: 0 if n < 2 else min(n - 1, max(1, round(fraction * n))) for c, n in counts.items()}
    # A group larger than its class's share could never be held out whole; it is split up.
    kept = [list(g) for g in groups if len(g) <= max(target[labels[i]] for i in g)]
    if len(kept) < len(list(groups)):
        warnings.warn(
            f"{len(list(groups)) - len(kept)} duplicate group(s) are larger than their class's "
            "validation share and were split between train and val",
            stacklevel=3,
        )
    grouped = {i for group in kept for i in group}
    units = kept + [[i] for i in range(len(labels)) if i not in grouped]
    units.sort()
    random.Random(seed).shuffle(units)  # noqa: S311 (a reproducible draw, not a secret)
    taken = dict.fromkeys(counts, 0)
    chosen: list[int] = []
    for unit in units:
        per_class: dict[int, int] = {}
        for i in unit:
            per_class[labels[i]] = per_class.get(labels[i], 0) + 1
        if all(taken[c] + k <= target[c] for c, k in per_class.items()):
            chosen += unit
            for c, k in per_class.items():
                taken[c] += k
    return sorted(chosen)


def draw(
    train: Split, hashes: Hashes | None, fraction: float, seed: int, max_distance: int
) -> set[int]:
    """The indices of ``train`` to hold out, keeping exact copies and images whose perceptual
    hashes are within ``max_distance`` bits together (no groups when the pre-scan was off)."""
    groups: list[list[int]] = []
    if hashes is not None:
        similar = small_copies(hashes.thumbs)
        groups = copy_groups(hashes.content, hashes.phash, max(0, max_distance), similar)
    return set(hold_out(train.labels.tolist(), groups, fraction, seed))


def saved(train: Split, names: Sequence[str]) -> set[int]:
    """The indices of ``train`` a checkpoint held out (by manifest path); warns about any
    that are gone."""
    wanted = set(names)
    held = {i for i, p in enumerate(train.paths) if relative(p, train.root) in wanted}
    if len(held) < len(wanted):
        warnings.warn(
            f"{len(wanted) - len(held)} held-out validation image(s) of the checkpoint are gone "
            "from train/; validating on the rest",
            stacklevel=3,
        )
    return held


def carve(train: Split, held: set[int]) -> tuple[Split, Split]:
    """``train`` without the ``held`` indices, and a ``val`` split of them (same root)."""
    keep = [i for i in range(len(train)) if i not in held]
    return train.select(keep, "train"), train.select(sorted(held), "val")


def relative(path: Path, root: Path) -> str:
    """``path`` as stored in the manifest: relative to the ``train/`` folder (``../`` for an
    annotation row's image beside it)."""
    return Path(os.path.relpath(path, root)).as_posix()


def write_manifest(path: Path, train: Split, val: Split, class_names: list[str]) -> None:
    """``split.csv``: every image of ``train/`` with its class and the split it went to."""
    rows = [
        (relative(p, split.root), class_names[int(label)], split.name)
        for split in (train, val)
        for p, label in zip(split.paths, split.labels, strict=True)
    ]
    write_csv(path, ["path", "class", "split"], sorted(rows))


@dataclass
class Processes:
    """How the splits' work is shared between the processes of a run (one of each, alone).

    Attributes:
        first_on_node: whether this process scans for its machine (the others then read the
            cache it wrote).
        barrier: wait for every process.
    """

    first_on_node: bool = True
    barrier: Callable[[], None] = field(default=lambda: None)


class FolderSplits:
    """Read, scan and hold out splits of ``data_dir``.

    Args:
        source: where the splits come from (class folders, JSONL or CSV).
        options: the data module's arguments (``scan``, ``val_fraction``, ``duplicate_bits``,
            ``on_leakage``, ``predict_dir``, ``label_key``, ``seed``).
        class_names: the class order.
    """

    def __init__(self, source: Source, options: Any, class_names: list[str]) -> None:
        self.source = source
        self.options = options
        self.class_names = class_names
        self.splits: dict[str, Split] = {}
        #: ``{split: {path: reason}}`` of files the pre-scan excluded.
        self.excluded: dict[str, dict[str, str]] = {}
        self.health = HealthCheck(class_names, options["duplicate_bits"], options["on_leakage"])
        #: All of ``train/`` before a validation share was held out (``val_fraction``).
        self.unsplit: Split | None = None
        self.unsplit_hashes: Hashes | None = None
        self.processes = Processes()
        self._cache: ScanCache | None = None

    @property
    def cache(self) -> ScanCache:
        """The scan cache (opened on first use)."""
        if self._cache is None:
            self._cache = ScanCache.open()
        return self._cache

    def root(self, name: str) -> Path:
        """The folder (or manifest) of split ``name``.

        Raises:
            DataError: it (or ``data_dir``) does not exist; the message says how to fix it.
        """
        return self.source.root(name)

    def get(self, name: str) -> Split | None:
        """Split ``name``, read and scanned on first use; ``None`` when its folder is absent."""
        if name not in self.splits:
            held_out = name == "val" and self.options["val_fraction"] > 0
            if name in ("val", "test") and not held_out and not self.source.present(name):
                return None
            self.splits[name] = self._read(name)
        return self.splits[name]

    def _read(self, name: str) -> Split:
        if name == "val" and self.options["val_fraction"] > 0:
            return self._hold_out()
        if name == "predict":
            if self.options["predict_dir"] is None:
                raise DataError("predict needs --data.predict_dir DIR (a folder of images).")
            folder = Path(self.options["predict_dir"])
            split = read_predict(folder, self.class_names, self.options["label_key"])
        else:
            split = self.source.read(name, self.class_names)
        if split.rejected:
            self.excluded.setdefault(name, {}).update(split.rejected)
        if not self.options["scan"]:
            return split
        split, hashes = self._scanned(split)
        if name != "predict":
            self.health.add(split, hashes)
        return split

    def _scanned(self, split: Split) -> tuple[Split, Hashes]:
        """``split`` without the files the pre-scan found unusable (``predict`` keeps them,
        marked), and the hashes of the rest. One process per machine scans; the others read
        what it cached."""
        if not self.processes.first_on_node:
            self.processes.barrier()
        result = scan_split(split, self.cache, progress=self.processes.first_on_node)
        self.health.memo = self.cache
        if self.processes.first_on_node:
            self.processes.barrier()
        hashes = Hashes(result.content, result.phash, result.thumbs)
        if self.options.get("decode") == "dali" and split.name in ("train", "val"):
            _check_dali_formats(split, result.kinds)
        if result.bad:
            self.excluded.setdefault(split.name, {}).update(
                (str(split.paths[i]), _where(split, i, r)) for i, r in result.bad.items()
            )
            if split.name == "predict":  # each file keeps its row in predictions.csv
                split.unusable = set(result.bad)
            else:
                keep = np.setdiff1d(np.arange(len(split)), list(result.bad))
                split, hashes = split.select(keep), hashes.select(keep)
        if len(split) == len(split.unusable):
            raise DataError(f"no readable images in {split.root}.")
        return split, hashes

    def _hold_out(self) -> Split:
        """A validation split carved from ``train/`` (see :func:`carve`); its
        duplicate groups need every training image's perceptual hash first."""
        fraction = self.options["val_fraction"]
        if not 0 < fraction < 1:
            raise DataError(f"val_fraction must be between 0 and 1, got {fraction}")
        if self.source.present("val"):
            raise DataError(
                f"{self.source.root('val')} exists, and val_fraction holds out part of train/ "
                "only when there is no val/ folder (nor valid/, nor val rows): drop "
                "--data.val_fraction or the validation split."
            )
        train = self.get("train")
        assert train is not None
        self.unsplit = train
        hashes = self.health.hashes.get("train")
        if hashes is not None:
            self._hash_now(train, hashes)
        self.unsplit_hashes = hashes
        seed = self.options["seed"] or 0
        held = draw(train, hashes, fraction, seed, self.options["duplicate_bits"])
        if not held:
            raise DataError(
                f"val_fraction {fraction} holds out no image of {train.root}: every class "
                "needs two or more images (one to train on, one to validate)."
            )
        return self.apply_held_out(held)

    def _hash_now(self, split: Split, hashes: Hashes) -> None:
        """Hash the images of ``split`` whose perceptual hash is not known yet (here, on
        threads, not in the first epoch's workers), and cache them."""
        from classifier.image_dataset import load_rgb

        missing = np.flatnonzero(hashes.phash == UNHASHED).tolist()
        if not missing:
            return

        def load(i: int) -> np.ndarray | None:
            try:
                return load_rgb(split.paths[i]).numpy()
            except Exception:  # unreadable since the scan: compared by its bytes only
                return None

        found = hash_files(load, missing, split.name, self.processes.first_on_node)
        hashes.phash[missing] = [found[i] for i in missing]
        if self.processes.first_on_node:
            self.cache.set_hashes(
                [split.paths.raw(i) for i in missing], [found[i] for i in missing]
            )

    def decoded(self, split: str, index: int) -> Any:
        """Image ``index`` of ``split`` decoded (``uint8`` CHW), or ``None`` if it cannot be."""
        from classifier.image_dataset import load_rgb

        try:
            return load_rgb(self.splits[split].paths[index])
        except Exception:  # unreadable since the scan: compared by its bytes only
            return None

    def apply_held_out(self, held: set[int]) -> Split:
        """Split the unsplit ``train/`` into train and the ``held`` validation images."""
        assert self.unsplit is not None
        self.splits["train"], val = carve(self.unsplit, held)
        if self.unsplit_hashes is not None:
            rest = sorted(set(range(len(self.unsplit))) - held)
            self.health.add(self.splits["train"], self.unsplit_hashes.select(rest))
            self.health.add(val, self.unsplit_hashes.select(sorted(held)))
        return val

    def held_out_again(self, names: list[str]) -> Split:
        """The validation images a checkpoint held out (by manifest path), instead of a draw."""
        assert self.unsplit is not None
        self.splits["val"] = self.apply_held_out(saved(self.unsplit, names))
        return self.splits["val"]


def _where(split: Split, index: int, reason: str) -> str:
    """``reason``, with the annotations row of file ``index`` when the split has rows."""
    return reason if split.origins is None else f"{reason} (row {split.origins[index]})"


def _check_dali_formats(split: Split, kinds: np.ndarray) -> None:
    """Refuse a split DALI would decode wrongly (:data:`~classifier.dali.DALI_REFUSED`).

    Raises:
        DataError: naming how many files, their formats and one of them.
    """
    refused = np.flatnonzero(np.isin(kinds, list(DALI_REFUSED)))
    if refused.size:
        formats = "/".join(sorted({kinds[i].decode() for i in refused}))
        example = printable(str(split.paths[int(refused[0])]))
        raise DataError(
            f"data.decode: dali: {refused.size} image(s) of {split.root} are {formats}, which "
            f"DALI does not decode as the CPU path does (e.g. {example}); convert them to JPEG "
            "or PNG, or use --data.decode cpu"
        )
