"""Data health: exact and near-duplicate images within and across splits.

Every image has two hashes: a digest of its bytes (the pre-scan's, for exact copies) and a
perceptual hash of its pixels (:mod:`classifier.perceptual_hash`, taken where the image is
decoded), searched for near copies without comparing all pairs. Images too small for such a
hash are compared by their thumbnails' pixels instead (:mod:`classifier.thumbnails`). Copies
are grouped, and each group named for what it means (:data:`KINDS`).

The data health check of a fit: exact copies at once, near copies once every image's
perceptual hash is known.

The pre-scan gives every file's content digest, so exact copies across and within splits are
reported (and ``on_leakage: error`` stops the run) before training starts. Perceptual hashes
come from the cache, or are taken by the loader workers from the images they decode anyway
(:class:`HashSlots`, shared memory the workers write into: the one thing the datasets know of
the check); when the first epoch and its validation are over, the hashes of every process are
combined, the images no loader decoded (``test/``, a dropped last batch, images a weighted
sampler did not draw) are hashed on threads, the new hashes are stored in the cache, and the
check runs again with near copies. :class:`FitHealth` is that check in a fit: the data module
creates it and hands its slots to the datasets; the trainer's hooks tell it when to finish.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier import report_items
from classifier.dist import max_over_processes
from classifier.errors import printable
from classifier.file_io import rank_zero_run_dir, write_csv, write_json
from classifier.hash_search import HASH_BITS, near_pairs
from classifier.perceptual_hash import (
    MIN_EDGE_BITS,
    MIN_SIDE,
    informative,
    informative_mask,
    phash_of,
)
from classifier.prescan import hash_files
from classifier.scan_cache import NO_HASH, UNHASHED, ScanCache, to_signed
from classifier.splits import DataError, Split, shared_files
from classifier.thumbnails import MIN_STD, SIZE, SMALL_THRESHOLD, THRESHOLD, compared, similar_pairs

if TYPE_CHECKING:
    import lightning.pytorch as pl


def groups_of(count: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected groups (two or more members) of ``count`` items linked by ``pairs``; the work
    grows with the pairs, not with ``count``."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        if not (0 <= a < count and 0 <= b < count):
            raise IndexError(f"pair ({a}, {b}) outside {count} items")
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in sorted(parent):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def copy_groups(
    content: np.ndarray,
    phash: np.ndarray,
    max_distance: int,
    similar: np.ndarray | None = None,
    near: np.ndarray | None = None,
) -> list[list[int]]:
    """Groups of files that are copies: the same content digest (``b""``: none), or
    informative perceptual hashes at most ``max_distance`` bits apart (``near``: their
    :func:`near_hash_pairs`, when known already), or linked by a pair of ``similar`` (small
    images alike in their pixels, :func:`small_copies`); with ``max_distance`` ``-1`` exact
    copies only."""
    content = np.asarray(content)
    pairs = [np.empty((0, 2), dtype=np.int64)]
    known = np.flatnonzero(content != content.dtype.type())
    if len(known):
        _, first, inverse = np.unique(content[known], return_index=True, return_inverse=True)
        exact = np.stack([known[first[inverse.ravel()]], known], axis=1)
        pairs.append(exact[exact[:, 0] != exact[:, 1]])
    if max_distance >= 0:
        pairs.append(near_hash_pairs(phash, max_distance) if near is None else near)
        if similar is not None:
            pairs.append(np.asarray(similar, np.int64).reshape(-1, 2))
    return groups_of(len(content), np.concatenate(pairs))


def near_hash_pairs(phash: np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs of the stored perceptual hashes ``phash`` that are informative and at most
    ``max_distance`` bits apart (:func:`~classifier.hash_search.near_pairs`)."""
    hashed = np.flatnonzero(informative_mask(phash))
    near = near_pairs(np.asarray(phash, np.int64)[hashed].view(np.uint64), max_distance)
    found: np.ndarray = hashed[near].reshape(-1, 2)
    return found


def small_copies(thumbs: np.ndarray) -> np.ndarray:
    """Index pairs of the small images whose ``thumbs`` (``b""``: none) show near copies."""
    return similar_pairs(list(thumbs))


#: Kinds of duplicate groups, worst first.
KINDS = ("leakage", "conflicting_labels", "split_overlap", "redundant")


@dataclass(frozen=True)
class ImageRecord:
    """One scanned image: where it is filed and its two hashes."""

    split: str
    label: str
    path: str
    content: str
    dhash: int | None


def _kinds(members: list[ImageRecord]) -> list[str]:
    kinds = []
    splits = {m.split for m in members}
    if "train" in splits and len(splits) > 1:
        kinds.append("leakage")  # the same picture in training and evaluation
    elif len(splits) > 1:
        kinds.append("split_overlap")  # val and test share a picture
    if len({m.label for m in members}) > 1:
        kinds.append("conflicting_labels")
    if not kinds:
        kinds.append("redundant")  # several copies in one class of one split
    return kinds


def _stored(value: int | None) -> int:
    return NO_HASH if value is None else to_signed(value)


def duplicate_groups(records: Sequence[ImageRecord], max_distance: int) -> list[list[int]]:
    """Indices of ``records`` that are copies of each other (:func:`copy_groups`)."""
    if not records:
        return []
    content = np.asarray([r.content for r in records], dtype=object).astype(str)
    phash = np.asarray([_stored(r.dhash) for r in records], dtype=np.int64)
    return copy_groups(content, phash, max_distance)


def health_report(records: Sequence[ImageRecord], max_distance: int) -> dict[str, Any]:
    """Every duplicate group with its kinds (``leakage``, ``conflicting_labels``,
    ``redundant``), whether its files are byte-identical, and a count per kind."""
    groups = [[records[i] for i in g] for g in duplicate_groups(records, max_distance)]
    hashed = sum(informative(r.dhash) for r in records)
    return _report(groups, len(records), hashed, 0, max_distance)


def _report(
    groups: list[list[ImageRecord]],
    images: int,
    hashed: int,
    pending: int,
    max_distance: int,
    small: int = 0,
) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        {
            "kinds": _kinds(members),
            "exact": len({m.content for m in members}) == 1,
            "images": [{"split": m.split, "class": m.label, "path": m.path} for m in members],
        }
        for members in groups
    ]
    summary = {
        kind: {
            "groups": sum(kind in g["kinds"] for g in found),
            "images": sum(len(g["images"]) for g in found if kind in g["kinds"]),
        }
        for kind in KINDS
    }
    return {
        "images": images,
        "max_distance_bits": max_distance,
        # Images under ``min_side`` px are compared by thumbnail (``small_images`` of them);
        # nearly flat and tiny images byte for byte only; images whose pixels were not decoded
        # yet (``pending``) only by their bytes, until the first epoch ends.
        "near_duplicate_check": {
            "images": hashed,
            "min_side": MIN_SIDE,
            "small_images": small,
            "pending": pending,
        },
        "summary": summary,
        "groups": found,
    }


@dataclass
class Hashes:
    """The content digests, perceptual hashes and thumbnails (``b""``: none) of a split's
    files, in its order."""

    content: np.ndarray
    phash: np.ndarray
    thumbs: np.ndarray

    def select(self, indices: np.ndarray | list[int]) -> Hashes:
        """The hashes of the files at ``indices``."""
        chosen = np.asarray(indices, dtype=np.int64)
        return Hashes(self.content[chosen], self.phash[chosen], self.thumbs[chosen])


def checked_names(splits: dict[str, Split], hashes: dict[str, Hashes]) -> list[str]:
    """The splits the duplicate report covers, in its order (labelled ones with hashes)."""
    return [n for n in splits if n != "predict" and n in hashes]


def duplicates(
    splits: dict[str, Split],
    hashes: dict[str, Hashes],
    class_names: list[str],
    max_distance: int,
    similar: np.ndarray | None = None,
    near: np.ndarray | None = None,
) -> dict[str, Any]:
    """The duplicate report over the labelled ``splits`` with their pre-scan ``hashes``;
    records are made only for the files in a group (10^6 files cost arrays, not objects).
    ``similar`` and ``near``: :func:`small_copies` of the splits' thumbnails and
    :func:`near_hash_pairs` of their hashes, in :func:`checked_names` order, when known
    already (computed here otherwise)."""
    names = checked_names(splits, hashes)
    content = np.concatenate([np.empty(0, "S16")] + [hashes[n].content for n in names])
    phash = np.concatenate([np.empty(0, np.int64)] + [hashes[n].phash for n in names])
    owner = np.concatenate(
        [np.empty(0, np.int64)] + [np.full(len(splits[n]), i) for i, n in enumerate(names)]
    )
    local = np.concatenate([np.empty(0, np.int64)] + [np.arange(len(splits[n])) for n in names])
    thumbs = np.concatenate([np.empty(0, object)] + [hashes[n].thumbs for n in names])
    if similar is None and max_distance >= 0:
        similar = small_copies(thumbs)

    def record(g: int) -> ImageRecord:
        split = splits[names[int(owner[g])]]
        i = int(local[g])
        label = class_names[int(split.labels[i])]
        value = int(phash[g])
        perceptual = None if value in (UNHASHED, NO_HASH) else value % 2**64
        return ImageRecord(split.name, label, str(split.paths[i]), content[g].hex(), perceptual)

    found = copy_groups(content, phash, max_distance, similar, near)
    groups = [[record(g) for g in group] for group in found]
    hashed = int(informative_mask(phash).sum())
    pending = int((phash == UNHASHED).sum()) if max_distance >= 0 else 0
    small = compared(list(thumbs)) if max_distance >= 0 else 0
    return _report(groups, len(content), hashed, pending, max_distance, small)


def _hand_report(folder: Path, report: dict[str, Any]) -> None:
    """Hand ``report.html`` the duplicate counts and the first groups' images."""
    rows = [(k, v["groups"], v["images"]) for k, v in report["summary"].items()]
    report_items.table(folder, "data", "data/duplicates", ("duplicates", "groups", "images"), rows)
    shown = [
        (
            ", ".join(g["kinds"]),
            "exact" if g["exact"] else "near",
            i["split"],
            i["class"],
            i["path"],
        )
        for g in report["groups"][:10]
        for i in g["images"]
    ]
    header = ("kind", "copy", "split", "class", "path")
    report_items.table(folder, "data", "data/groups", header, shown)


def check_duplicates(
    report: dict[str, Any],
    on_leakage: str,
    folder: Path | None,
    announce: bool = True,
    brief: bool = False,
) -> None:
    """Write ``data_health.json`` (when ``folder`` is given: rank 0) and, when ``announce``,
    print a summary (one line when ``brief``) and warn about leakage; raise instead when
    ``on_leakage`` is ``error`` (after the file is written, so it lists every group)."""
    message = leakage(report)
    if folder is not None:
        write_json(folder / "data_health.json", report)
        _hand_report(folder, report)
        if announce:
            shown = _one_line(report) if brief else describe(report)
            print(printable(f"{shown}\n  every group: {folder / 'data_health.json'}"))
    if message and on_leakage == "error":
        raise DataError(f"{message}\nRemove the copies, or set --data.on_leakage warn.")
    if message and announce:
        warnings.warn(message, stacklevel=4)


def report_shared(splits: dict[str, Split]) -> None:
    """Warn about files two splits share by link (the check when there are no hashes)."""
    shared = shared_files(splits)
    if shared:
        listing = "\n".join(f"  {p} ({a}/) = {q} ({b}/)" for a, b, p, q in shared[:10])
        more = f"\n  ... and {len(shared) - 10} more" if len(shared) > 10 else ""
        warnings.warn(
            f"{len(shared)} file(s) are in two splits at once (links or hard links), so the "
            f"evaluation sees training images:\n{listing}{more}",
            stacklevel=3,
        )


def report_excluded(
    excluded: dict[str, dict[str, str]], strict: bool, folder: Path | None, rows: bool = False
) -> None:
    """Warn about (``strict``: stop on) the files the pre-scan excluded (and, when ``rows``,
    the annotation rows left out); list them all in ``folder/excluded_files.csv`` when a
    folder is given (rank 0)."""
    what = "unusable image(s) or row(s)" if rows else "unreadable image(s)"
    found = [(s, p, r) for s, bad in excluded.items() for p, r in sorted(bad.items())]
    listing = "\n".join(f"  {p}: {r}" for _, p, r in found[:20])
    more = f"\n  ... and {len(found) - 20} more" if len(found) > 20 else ""
    if strict:
        raise DataError(f"{len(found)} {what} (strict: true):\n{listing}{more}")
    report = ""
    if folder is not None:
        write_csv(folder / "excluded_files.csv", ["split", "path", "reason"], found)
        report = f" (list in {folder / 'excluded_files.csv'})"
    warnings.warn(f"excluded {len(found)} {what}{report}:\n{listing}{more}", stacklevel=3)


def _one_line(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{v['groups']} {k.replace('_', ' ')}" for k, v in report["summary"].items())
    check = report["near_duplicate_check"]
    checked = check["images"] + check.get("small_images", 0)
    return f"Data health, near copies of {checked} images compared: {counts} group(s)"


def describe(report: dict[str, Any], limit: int = 5) -> str:
    """A few lines for the console: counts per kind and the first groups of the worst kind."""
    summary = report["summary"]
    check = report["near_duplicate_check"]
    lines = [
        f"Data health: {report['images']} images, near copies within "
        f"{report['max_distance_bits']} of {HASH_BITS} perceptual-hash bits"
    ]
    pending = check.get("pending", 0)
    if pending:
        lines.append(
            f"  ({pending} image(s) not decoded yet are compared byte for byte until the first "
            "epoch has decoded them; near copies are reported then)"
        )
    small = check.get("small_images", 0)
    if small:
        lines.append(f"  ({small} image(s) under {check['min_side']} px compared by thumbnail)")
    exact = report["images"] - check["images"] - pending - small
    if exact > 0:
        lines.append(f"  ({exact} image(s) tiny or nearly flat are compared byte for byte only)")
    labels = {
        "leakage": "in train and in val/test (evaluation sees training images)",
        "conflicting_labels": "filed under two classes",
        "split_overlap": "in both val and test",
        "redundant": "repeated within one class",
    }
    for kind, label in labels.items():
        counts = summary[kind]
        lines.append(f"  {counts['groups']:5d} group(s), {counts['images']} images {label}")
    worst = next((k for k in labels if summary[k]["groups"]), None)
    if worst is not None:
        shown = [g for g in report["groups"] if worst in g["kinds"]][:limit]
        for group in shown:
            where = ", ".join(f"{i['split']}/{i['class']}:{i['path']}" for i in group["images"][:3])
            more = len(group["images"]) - 3
            lines.append(f"    {worst}: {where}" + (f" (+{more})" if more > 0 else ""))
    return "\n".join(lines)


def leakage(report: dict[str, Any], limit: int = 10) -> str | None:
    """A message naming the files that two splits share (exact or near copies), or ``None``."""
    groups = [g for g in report["groups"] if "leakage" in g["kinds"]]
    if not groups:
        return None
    listing = "\n".join(
        "  "
        + " = ".join(f"{i['path']} ({i['split']}/)" for i in g["images"][:3])
        + (f" (+{len(g['images']) - 3})" if len(g["images"]) > 3 else "")
        for g in groups[:limit]
    )
    more = f"\n  ... and {len(groups) - limit} more" if len(groups) > limit else ""
    return (
        f"{len(groups)} image group(s) appear in train and in val or test (exact or near "
        f"copies), so the evaluation sees training images:\n{listing}{more}"
    )


#: What a remembered small-image comparison depends on besides the thumbnails.
SMALL_MEMO = f"small-copies 3 {SIZE} {THRESHOLD} {SMALL_THRESHOLD} {MIN_STD}".encode()
#: What a remembered near-copy search depends on besides the hashes and the distance.
NEAR_MEMO = f"near-pairs 1 {MIN_EDGE_BITS}".encode()


class HashSlots:
    """The perceptual hashes of one split in shared memory, where the loader workers write the
    hash of each image they decode while it is still missing (allocated before the workers
    start, so they all write the same pages). The datasets see only :meth:`wants` and
    :meth:`put` (:class:`~classifier.image_dataset.HashSink`).

    Args:
        phash: the split's stored hashes (:data:`~classifier.scan_cache.UNHASHED`: missing).
    """

    def __init__(self, phash: np.ndarray) -> None:
        self.values = torch.from_numpy(np.array(phash, dtype=np.int64))
        self.values.share_memory_()  # type: ignore[no-untyped-call]

    def wants(self, index: int) -> bool:
        """Whether image ``index`` still needs its hash (it is then decoded in full)."""
        return int(self.values[index]) == UNHASHED

    def put(self, index: int, image: torch.Tensor) -> None:
        """Store the hash of image ``index`` (``uint8`` ``3xHxW``, as decoded)."""
        self.values[index] = phash_of(image)


class HealthCheck:
    """The duplicate report of one fit's splits.

    Args:
        class_names: the class order.
        max_distance: perceptual-hash bits within which two images are near copies.
        on_leakage: ``warn`` or ``error`` when train shares an image with val or test.
    """

    def __init__(self, class_names: list[str], max_distance: int, on_leakage: str) -> None:
        self.class_names = class_names
        self.max_distance = max_distance
        self.on_leakage = on_leakage
        #: The splits checked, and their hashes (filled by the pre-scan, then the workers).
        self.splits: dict[str, Split] = {}
        self.hashes: dict[str, Hashes] = {}
        #: Shared-memory perceptual hashes the loader workers fill, by split.
        self.slots: dict[str, HashSlots] = {}
        #: The newest report, and whether near copies were fully checked in it.
        self.report: dict[str, Any] | None = None
        self.complete = False
        #: Near copies among the small images (found from the pre-scan's thumbnails, which do
        #: not change during the fit, so once; ``None``: not yet).
        self.similar: np.ndarray | None = None
        #: Where the near copies among small images are remembered between runs (the scan
        #: cache; ``None``: computed every time).
        self.memo: ScanCache | None = None

    def add(self, split: Split, hashes: Hashes) -> None:
        """Check ``split`` too (its files after exclusions, and their hashes)."""
        self.splits[split.name] = split
        self.hashes[split.name] = hashes
        self.complete = False
        self.similar = None

    def slot(self, name: str) -> HashSlots | None:
        """The shared hashes the loader workers of split ``name`` write into, when some are
        missing (``None``: all known, nothing to compute)."""
        hashes = self.hashes.get(name)
        if hashes is None or self.complete or not (hashes.phash == UNHASHED).any():
            return None
        if name not in self.slots:
            self.slots[name] = HashSlots(hashes.phash)
        return self.slots[name]

    def check(self, folder: Path | None, announce: bool, brief: bool = False) -> None:
        """Report what the hashes known now show (``data_health.json`` when ``folder`` is
        given, a summary when ``announce``); leakage warns, or raises with ``error``."""
        self.complete = all(not (h.phash == UNHASHED).any() for h in self.hashes.values())
        near = None
        if self.max_distance >= 0:
            names = checked_names(self.splits, self.hashes)
            keys = np.concatenate(
                [np.empty((0, 5), np.int64)] + [self.splits[n].keys for n in names]
            )
            files = hashlib.sha256(keys.tobytes()).digest()  # 40 MB at 10^6 files: once
            if self.similar is None:
                thumbs = np.concatenate(
                    [np.empty(0, object)] + [self.hashes[n].thumbs for n in names]
                )
                lengths = np.fromiter((len(t) for t in thumbs), np.int64, len(thumbs))
                self.similar = self._remembered(
                    [SMALL_MEMO, files, lengths.tobytes(), b"".join(thumbs)],
                    len(thumbs),
                    partial(small_copies, thumbs),
                )
            phash = np.concatenate([np.empty(0, np.int64)] + [self.hashes[n].phash for n in names])
            near = self._remembered(
                [NEAR_MEMO, str(self.max_distance).encode(), files, phash.tobytes()],
                len(phash),
                partial(near_hash_pairs, phash, self.max_distance),
            )
        self.report = duplicates(
            self.splits, self.hashes, self.class_names, self.max_distance, self.similar, near
        )
        check_duplicates(self.report, self.on_leakage, folder, announce, brief)

    def _remembered(
        self, parts: list[bytes], count: int, compute: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Index pairs (of ``count`` files) from ``compute()``, recalled from :attr:`memo` when
        the same ``parts`` were seen before: the files' cache keys (size, times, device,
        inode) and what is compared. Small images' thumbnails, 10^5 of them, take 11 s to
        compare on two cores, the near-copy search over 10^6 hashes 4 s: a warm start would
        pay that every time. The keys make a remembered result as local as a cached row: one
        from another machine's cache never matches."""
        if self.memo is None:
            return compute()
        digest = hashlib.sha256()
        for part in parts:
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        key = digest.digest()
        stored = self.memo.recall(key)
        if stored is not None and len(stored) % 16 == 0:
            pairs = np.frombuffer(stored, dtype=np.int64).reshape(-1, 2)
            if ((pairs >= 0) & (pairs < count)).all():
                return pairs.copy()
        pairs = np.ascontiguousarray(compute(), dtype=np.int64).reshape(-1, 2)
        self.memo.remember(key, pairs.tobytes())
        return pairs

    def finish(
        self,
        combine: Callable[[torch.Tensor], torch.Tensor],
        load: Callable[[str, int], np.ndarray | None],
        cache: ScanCache | None,
        folder: Path | None,
    ) -> None:
        """Collect the workers' hashes (``combine``: the element-wise maximum over processes),
        hash what no loader decoded (``load(split, i)``), store the new hashes in ``cache`` and
        run the full check. Every process calls it; ``folder`` is rank 0's run folder."""
        if self.complete:
            return
        for name, hashes in self.hashes.items():
            before = hashes.phash.copy()
            if name in self.slots:
                hashes.phash[:] = combine(self.slots[name].values.clone()).numpy()
            missing = np.flatnonzero(hashes.phash == UNHASHED).tolist()
            if missing:  # the same on every process: each hashes them (cheap next to a run)
                found = hash_files(partial(load, name), missing, name, folder is not None)
                hashes.phash[missing] = [found[i] for i in missing]
            new = np.flatnonzero(before != hashes.phash)
            if cache is not None and len(new):
                split = self.splits[name]
                cache.set_hashes([split.paths.raw(int(i)) for i in new], hashes.phash[new].tolist())
        for name, slots in self.slots.items():  # the workers stop hashing (and bypassing a cache)
            slots.values.copy_(torch.from_numpy(self.hashes[name].phash))
        self.slots.clear()
        self.check(folder, announce=folder is not None, brief=True)


class FitHealth(Callback):
    """The data health check of a fit, with one seam to the loaders.

    :meth:`start` (the data module's ``setup("fit")``) checks what the hashes known then show:
    exact copies, and near copies of images already hashed. The datasets get :meth:`sink`, the
    shared memory their workers write each decoded image's hash into. :meth:`start` also adds
    this check to the trainer's callbacks, and the trainer's hooks finish it on every process:
    when the second epoch starts (after the first epoch's validation and checkpoints), when a
    run resumed past the first epoch starts training, or at the end of a shorter fit (not
    interrupted). Finishing collects the hashes, hashes what no loader decoded, stores them in
    the scan cache and checks again; leakage then warns, or stops the run with ``error``.

    Args:
        check: the splits' duplicate report, fed by the scan as they are read.
        enabled: whether to check (``duplicate_bits`` >= 0 and ``scan``).
        read: reads a split by name (``test/`` is checked too when it exists).
        load: image ``i`` of split ``name`` decoded (``uint8`` CHW), or ``None``.
        cache: the scan cache, where new hashes are stored (opened by one process a machine).
    """

    def __init__(
        self,
        check: HealthCheck,
        enabled: bool,
        read: Callable[[str], object],
        load: Callable[[str, int], np.ndarray | None],
        cache: Callable[[], ScanCache],
    ) -> None:
        self.check = check
        self.enabled = enabled
        self.read = read
        self.load = load
        self.cache = cache
        #: Whether a first fit announced the check (later ones write the file only).
        self.announced = False

    def sink(self, name: str) -> HashSlots | None:
        """Where the loader workers of split ``name`` write the hashes still missing (train
        and val: what the first epoch decodes), ``None`` when nothing is to be hashed."""
        if not self.enabled or name not in ("train", "val"):
            return None
        return self.check.slot(name)

    def start(self, trainer: pl.Trainer | None) -> bool:
        """Check duplicates in and across train, val and test as far as the hashes known now
        tell (near copies of images not hashed yet: when the first epoch is over); whether
        it ran."""
        if not self.enabled:
            return False
        self.read("test")  # a copy in test/ inflates the final score as much as in val/
        self.check.check(rank_zero_run_dir(trainer), announce=not self.announced)
        self.announced = True
        if trainer is not None and self not in trainer.callbacks:  # type: ignore[attr-defined]
            trainer.callbacks.insert(0, self)  # type: ignore[attr-defined]
        return True

    def finish(self, trainer: pl.Trainer | None) -> None:
        """Complete the check with the hashes the loaders took (every process calls this)."""
        if not self.enabled or self.check.complete:
            return
        first = trainer is None or trainer.local_rank == 0
        self.check.finish(
            max_over_processes,
            self.load,
            self.cache() if first else None,
            rank_zero_run_dir(trainer),
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A run resumed past its first epoch finishes before it trains."""
        if trainer.current_epoch > 0:
            self.finish(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The first epoch and its validation are over when the second starts."""
        if trainer.current_epoch > 0:
            self.finish(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """A fit of one epoch (or less) ends before a second starts."""
        if stage == "fit" and not trainer.interrupted:
            self.finish(trainer)
