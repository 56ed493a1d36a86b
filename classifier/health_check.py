"""The data health check of a fit: exact copies at once, near copies once every image's
perceptual hash is known.

The pre-scan gives every file's content digest, so exact copies across and within splits are
reported (and ``on_leakage: error`` stops the run) before training starts. Perceptual hashes
come from the cache, or are taken by the loader workers from the images they decode anyway
(:attr:`HealthCheck.slots`, shared memory the workers write into); when the first epoch and its
validation are over, the hashes of every process are combined, the images no loader decoded
(``test/``, a dropped last batch, images a weighted sampler did not draw) are hashed on
threads, the new hashes are stored in the cache, and the check runs again with near copies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.health import (
    Hashes,
    check_duplicates,
    checked_names,
    duplicates,
    near_hash_pairs,
    small_copies,
)
from classifier.perceptual_hash import MIN_EDGE_BITS
from classifier.prescan import hash_files
from classifier.scan_cache import UNHASHED, ScanCache
from classifier.splits import Split
from classifier.thumbnails import MIN_STD, SIZE, SMALL_THRESHOLD, THRESHOLD

#: What a remembered small-image comparison depends on besides the thumbnails.
SMALL_MEMO = f"small-copies 3 {SIZE} {THRESHOLD} {SMALL_THRESHOLD} {MIN_STD}".encode()
#: What a remembered near-copy search depends on besides the hashes and the distance.
NEAR_MEMO = f"near-pairs 1 {MIN_EDGE_BITS}".encode()


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
        self.slots: dict[str, torch.Tensor] = {}
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

    def slot(self, name: str) -> torch.Tensor | None:
        """The shared tensor the loader workers of split ``name`` write perceptual hashes into,
        when some are missing (``None``: all known, nothing to compute)."""
        hashes = self.hashes.get(name)
        if hashes is None or self.complete or not (hashes.phash == UNHASHED).any():
            return None
        if name not in self.slots:
            shared = torch.from_numpy(hashes.phash.copy())
            shared.share_memory_()  # type: ignore[no-untyped-call]
            self.slots[name] = shared
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
                hashes.phash[:] = combine(self.slots[name].clone()).numpy()
            missing = np.flatnonzero(hashes.phash == UNHASHED).tolist()
            if missing:  # the same on every process: each hashes them (cheap next to a run)
                found = hash_files(partial(load, name), missing, name, folder is not None)
                hashes.phash[missing] = [found[i] for i in missing]
            new = np.flatnonzero(before != hashes.phash)
            if cache is not None and len(new):
                split = self.splits[name]
                cache.set_hashes([split.paths.raw(int(i)) for i in new], hashes.phash[new].tolist())
        self.slots.clear()
        self.check(folder, announce=folder is not None, brief=True)
