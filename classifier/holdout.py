"""A validation split carved out of ``train/`` when the data has no ``val/`` folder.

The split is stratified (each class gives the same share, to within one image), seeded, and
keeps every group of duplicate images on one side, so no copy of a validation image is trained
on. It is written to ``split.csv`` in the run folder and carried in checkpoints, so a resumed run,
``validate`` and ``test`` use exactly the same images even if files were added since.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

from classifier.files import write_csv
from classifier.health import Hashes, copy_groups, small_copies
from classifier.splits import Split


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
