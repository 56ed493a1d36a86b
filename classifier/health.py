"""Data health: exact and near-duplicate images within and across splits.

Every image has two hashes: a digest of its bytes (the pre-scan's, for exact copies) and a
perceptual hash of its pixels (:func:`dhash`, taken where the image is decoded). Near
duplicates are found without comparing all pairs: the 64 hash bits are cut into
``max_distance + 1`` bands, and two hashes that differ in at most ``max_distance`` bits agree on
at least one band (pigeonhole), so only hashes sharing a band's value are compared
(:func:`near_pairs`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.files import write_csv, write_json
from classifier.scan_cache import NO_HASH, UNHASHED, to_signed
from classifier.splits import DataError, Split, shared_files
from classifier.text import printable

#: Bits of the perceptual hash.
HASH_BITS = 64
#: Images whose shorter side is below this get no perceptual hash: at that size distinct
#: pictures (digits, icons) hash as closely as resized copies, so only exact copies are found.
MIN_SIDE = 64
#: A hash with fewer than this many bits set (or unset) comes from a nearly flat picture
#: (blank frames, plain backgrounds): such pictures all hash alike, so they too are compared
#: byte for byte only.
MIN_EDGE_BITS = 8


#: Rows and columns of the image the thumbnail averages (every k-th of a larger image): a
#: 500x375 photo costs about 0.2 ms instead of the 1 ms of filtering every pixel, and resized or
#: re-encoded copies still hash within 3 bits of each other.
SAMPLES = 128
#: ITU-R 601 luma weights.
_GREY = torch.tensor([0.299, 0.587, 0.114])


def dhash(image: torch.Tensor) -> int | None:
    """64-bit difference hash of an RGB ``uint8`` ``3xHxW`` image: a 9x8 grey thumbnail (the
    mean of :data:`SAMPLES` rows and columns over each cell), one bit per pair of horizontal
    neighbours (1 where the right one is brighter). Resizing, re-encoding and small colour
    changes move few bits. ``None`` below :data:`MIN_SIDE` and for nearly flat pictures
    (:data:`MIN_EDGE_BITS`)."""
    import torch.nn.functional as F  # noqa: N812

    height, width = image.shape[1:]
    if min(height, width) < MIN_SIDE:
        return None
    sampled = image[:, :: max(1, height // SAMPLES), :: max(1, width // SAMPLES)].float()
    grey = torch.tensordot(_GREY, sampled, dims=1)
    thumbnail = F.adaptive_avg_pool2d(grey[None, None], (8, 9))[0, 0]
    edges = (thumbnail[:, 1:] > thumbnail[:, :-1]).flatten().numpy()
    if not MIN_EDGE_BITS <= int(edges.sum()) <= HASH_BITS - MIN_EDGE_BITS:
        return None
    return int.from_bytes(np.packbits(edges).tobytes(), "big")


def phash_of(image: torch.Tensor | np.ndarray) -> int:
    """:func:`dhash` as the pre-scan stores it: a signed 64-bit integer, or
    :data:`~classifier.scan_cache.NO_HASH` for an image too small or flat to have one."""
    tensor = torch.as_tensor(image)
    value = dhash(tensor)
    return NO_HASH if value is None else to_signed(value)


def informative_mask(phash: np.ndarray) -> np.ndarray:
    """Which stored perceptual hashes can tell a near copy from a look-alike (computed, and
    with :data:`MIN_EDGE_BITS` to ``64 - MIN_EDGE_BITS`` bits set)."""
    values = np.asarray(phash, dtype=np.int64)
    bits = np.bitwise_count(values.view(np.uint64))
    computed = (values != UNHASHED) & (values != NO_HASH)
    mask: np.ndarray = computed & (bits >= MIN_EDGE_BITS) & (bits <= HASH_BITS - MIN_EDGE_BITS)
    return mask


def _band_pairs(values: np.ndarray, lo: int, hi: int, max_distance: int) -> list[np.ndarray]:
    """Pairs of distinct ``values`` that share bits ``lo:hi`` and are within the distance."""
    key = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    found = []
    for offset in range(1, len(order)):
        same = ordered[offset:] == ordered[:-offset]
        if not same.any():  # no run of equal keys is longer than offset
            break
        first, second = order[:-offset][same], order[offset:][same]
        close = np.bitwise_count(values[first] ^ values[second]) <= max_distance
        found.append(np.stack([first[close], second[close]], axis=1))
    return found


def near_pairs(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, linking hashes at most ``max_distance`` bits apart:
    every such pair of distinct hashes, and each repeat of a hash with its first occurrence
    (the same groups as all pairs give, see :func:`groups_of`). Distinct hashes are compared
    through the banded index, so the cost grows with the candidates, not with all pairs.
    """
    values = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS - 1}], got {max_distance}")
    if len(values) < 2:
        return np.empty((0, 2), dtype=np.int64)
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    pairs = [np.stack([first[inverse], np.arange(len(values))], axis=1)]  # equal hashes
    edges = np.linspace(0, HASH_BITS, min(max_distance, HASH_BITS - 1) + 2).astype(int)
    if max_distance > 0:
        for lo, hi in itertools.pairwise(edges):
            for found in _band_pairs(unique, int(lo), int(hi), max_distance):
                pairs.append(first[found])  # one representative per distinct hash
    joined = np.concatenate(pairs)
    joined = joined[joined[:, 0] != joined[:, 1]]
    joined.sort(axis=1)
    return np.unique(joined, axis=0)


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


def copy_groups(content: np.ndarray, phash: np.ndarray, max_distance: int) -> list[list[int]]:
    """Groups of files that are copies: the same content digest (``b""``: none), or
    informative perceptual hashes at most ``max_distance`` bits apart (``-1``: exact only)."""
    content = np.asarray(content)
    pairs = [np.empty((0, 2), dtype=np.int64)]
    known = np.flatnonzero(content != content.dtype.type())
    if len(known):
        _, first, inverse = np.unique(content[known], return_index=True, return_inverse=True)
        exact = np.stack([known[first[inverse.ravel()]], known], axis=1)
        pairs.append(exact[exact[:, 0] != exact[:, 1]])
    if max_distance >= 0:
        hashed = np.flatnonzero(informative_mask(phash))
        near = near_pairs(np.asarray(phash, np.int64)[hashed].view(np.uint64), max_distance)
        pairs.append(hashed[near].reshape(-1, 2))
    return groups_of(len(content), np.concatenate(pairs))


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


def informative(value: int | None) -> bool:
    """Whether an unsigned perceptual hash can tell a near copy from a look-alike (see
    :data:`MIN_EDGE_BITS`)."""
    if value is None:
        return False
    return MIN_EDGE_BITS <= value.bit_count() <= HASH_BITS - MIN_EDGE_BITS


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
    groups: list[list[ImageRecord]], images: int, hashed: int, pending: int, max_distance: int
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
        # Small and nearly flat images are compared byte for byte only; images whose pixels
        # were not decoded yet (``pending``) only by their bytes, until the first epoch ends.
        "near_duplicate_check": {"images": hashed, "min_side": MIN_SIDE, "pending": pending},
        "summary": summary,
        "groups": found,
    }


@dataclass
class Hashes:
    """The content digests and perceptual hashes of a split's files, in its order."""

    content: np.ndarray
    phash: np.ndarray

    def select(self, indices: np.ndarray | list[int]) -> Hashes:
        """The hashes of the files at ``indices``."""
        chosen = np.asarray(indices, dtype=np.int64)
        return Hashes(self.content[chosen], self.phash[chosen])


def duplicates(
    splits: dict[str, Split], hashes: dict[str, Hashes], class_names: list[str], max_distance: int
) -> dict[str, Any]:
    """The duplicate report over the labelled ``splits`` with their pre-scan ``hashes``;
    records are made only for the files in a group (10^6 files cost arrays, not objects)."""
    names = [n for n in splits if n != "predict" and n in hashes]
    content = np.concatenate([np.empty(0, "S16")] + [hashes[n].content for n in names])
    phash = np.concatenate([np.empty(0, np.int64)] + [hashes[n].phash for n in names])
    owner = np.concatenate(
        [np.empty(0, np.int64)] + [np.full(len(splits[n]), i) for i, n in enumerate(names)]
    )
    local = np.concatenate([np.empty(0, np.int64)] + [np.arange(len(splits[n])) for n in names])

    def record(g: int) -> ImageRecord:
        split = splits[names[int(owner[g])]]
        i = int(local[g])
        label = class_names[int(split.labels[i])]
        value = int(phash[g])
        perceptual = None if value in (UNHASHED, NO_HASH) else value % 2**64
        return ImageRecord(split.name, label, str(split.paths[i]), content[g].hex(), perceptual)

    groups = [[record(g) for g in group] for group in copy_groups(content, phash, max_distance)]
    hashed = int(informative_mask(phash).sum())
    pending = int((phash == UNHASHED).sum()) if max_distance >= 0 else 0
    return _report(groups, len(content), hashed, pending, max_distance)


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


def report_excluded(excluded: dict[str, dict[str, str]], strict: bool, folder: Path | None) -> None:
    """Warn about (``strict``: stop on) the files the pre-scan excluded; list them all in
    ``folder/excluded_files.csv`` when a folder is given (rank 0)."""
    rows = [(s, p, r) for s, bad in excluded.items() for p, r in sorted(bad.items())]
    listing = "\n".join(f"  {p}: {r}" for _, p, r in rows[:20])
    more = f"\n  ... and {len(rows) - 20} more" if len(rows) > 20 else ""
    if strict:
        raise DataError(f"{len(rows)} unreadable image(s) (strict: true):\n{listing}{more}")
    report = ""
    if folder is not None:
        write_csv(folder / "excluded_files.csv", ["split", "path", "reason"], rows)
        report = f" (list in {folder / 'excluded_files.csv'})"
    warnings.warn(
        f"excluded {len(rows)} unreadable image(s){report}:\n{listing}{more}", stacklevel=3
    )


def _one_line(report: dict[str, Any]) -> str:
    counts = ", ".join(f"{v['groups']} {k.replace('_', ' ')}" for k, v in report["summary"].items())
    checked = report["near_duplicate_check"]["images"]
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
    small = report["images"] - check["images"] - pending
    if small > 0:
        lines.append(
            f"  ({small} image(s) under {check['min_side']} px or nearly flat are compared "
            "byte for byte only)"
        )
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
