"""Data health: exact and near-duplicate images within and across splits.

Every image has two hashes: a digest of its bytes (the pre-scan's, for exact copies) and a
perceptual hash of its pixels (:mod:`classifier.perceptual_hash`, taken where the image is
decoded), searched for near copies without comparing all pairs. Images too small for such a
hash are compared by their thumbnails' pixels instead (:mod:`classifier.thumbnails`). Copies
are grouped, and each group named for what it means (:data:`KINDS`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifier.files import write_csv, write_json
from classifier.hash_search import HASH_BITS, near_pairs
from classifier.perceptual_hash import MIN_SIDE, informative, informative_mask
from classifier.scan_cache import NO_HASH, UNHASHED, to_signed
from classifier.splits import DataError, Split, shared_files
from classifier.text import printable
from classifier.thumbnails import compared, similar_pairs


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
