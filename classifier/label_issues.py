"""``LabelIssues``: the images of train, val and test whose given label is probably wrong.

Training images are scored by their area under the margin, accumulated from the logits
``training_step`` computes anyway; validation and test images by confident learning on the
calibrated probabilities of the epoch's evaluation (the scores below). No second
training run and no extra pass over the data: the cost is an ``index_add`` per training batch on
the device and a few matrix operations per evaluation epoch.

Reads, through the documented contract: ``training_step``'s output ``{"loss", "logits"}``
(``logits`` absent for batches mixed by MixUp/CutMix, which are skipped and counted), the
evaluation steps' ``logits`` and ``indices``, the batch's labels, and
:meth:`~classifier.callback_contract.ImageData.files` / ``eval_image`` for the rows and pictures.

Scores that find images whose given label is probably wrong.

Two signals, one per kind of split:

- **Training images**: the area under the margin (Pleiss et al., "Identifying Mislabeled Data
  using the Area Under the Margin Ranking", NeurIPS 2020). Each time an image is trained on,
  its margin is the logit of its given class minus the largest other logit; averaged over the
  run, a correctly labelled image's margin grows positive as the network learns it, while a
  mislabelled one stays negative until (if ever) the network memorises it.
- **Validation and test images**: the network never trained on them, so its calibrated
  probabilities are out of sample and confident learning applies (Northcutt et al., "Confident
  Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021): class ``j``'s threshold is
  the mean probability of ``j`` over the images labelled ``j``; an image is suspect when the
  most probable class whose probability reaches its threshold is not its given class. Suspects
  are ranked by the probability of their given label (self-confidence), lowest first.

The few lines are written here rather than imported from cleanlab: cleanlab brings
scikit-learn and SciPy, and SciPy alone makes every command start 0.7 s later (torchmetrics
imports ``scipy.signal`` when it is installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module, image_data, rows_of
from classifier.dist import gather_batches
from classifier.figures import as_uint8, picture_grid, save_png, submit_figure
from classifier.file_io import run_dir, write_csv, write_json, write_jsonl
from classifier.selective import MIN_IMAGES, fit_temperature


def margins(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's margin (the given class's logit minus the largest other) and that largest
    other class; ``labels`` must be valid class indices."""
    logits = logits.float()
    given = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -torch.inf)
    largest, other = others.max(1)
    return given - largest, other


@dataclass(frozen=True)
class Suspects:
    """Suspect images of one split, most suspect first.

    Attributes:
        indices: positions in the split.
        suggested: the class each image more probably belongs to.
        scores: lower is more suspect (training: area under the margin, in logits;
            evaluation: calibrated probability of the given label).
        estimated: how many labels of the split are probably wrong (-1: no estimate).
    """

    indices: torch.Tensor
    suggested: torch.Tensor
    scores: torch.Tensor
    estimated: int = -1

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Margins:
    """Per training image, on the device: the sum of its margins, how many there are, and its
    latest largest other class (-1: none yet)."""

    sum: torch.Tensor
    count: torch.Tensor
    other: torch.Tensor

    @staticmethod
    def zeros(size: int, device: torch.device) -> Margins:
        """No margins yet for ``size`` images."""
        return Margins(
            torch.zeros(size, dtype=torch.float64, device=device),
            torch.zeros(size, dtype=torch.float64, device=device),
            torch.full((size,), -1, dtype=torch.long, device=device),
        )

    def update(
        self, indices: torch.Tensor, margin: torch.Tensor, other: torch.Tensor, keep: torch.Tensor
    ) -> None:
        """Add one batch's margins where ``keep`` (weights, not a mask: no device sync)."""
        weight = keep.double()
        self.sum.index_add_(0, indices, torch.where(keep, margin.double(), 0.0))
        self.count.index_add_(0, indices, weight)
        self.other.index_put_((indices,), torch.where(keep, other, self.other[indices]))

    def add(self, more: Margins) -> None:
        """Add ``more``'s margins; its largest other classes replace these where known."""
        device = self.sum.device
        self.sum += more.sum.to(device)
        self.count += more.count.to(device)
        newer = more.other.to(device)
        self.other = torch.where(newer >= 0, newer, self.other)


def margins_problem(state: dict[str, Any], size: int, classes: int) -> str | None:
    """What is wrong with a checkpoint's sums for ``size`` training images of ``classes``
    classes (a checkpoint may come from someone else), or ``None``."""
    tensors = [state.get(k) for k in ("sum", "count", "other")]
    if not all(isinstance(t, torch.Tensor) and t.shape == (size,) for t in tensors):
        return f"the checkpoint's sums are not for this run's {size} training images"
    total, count, other = tensors
    assert isinstance(total, torch.Tensor) and isinstance(count, torch.Tensor)
    assert isinstance(other, torch.Tensor)
    if not (total.is_floating_point() and count.is_floating_point()) or other.is_floating_point():
        return "the checkpoint's sums have the wrong types"
    # One class has no other logit: its margins are +inf, which is no reason to refuse.
    if torch.isnan(total).any() or not ((count >= 0).all() and torch.isfinite(count).all()):
        return "the checkpoint's sums are not finite"
    if not bool(((other >= -1) & (other < classes)).all()):
        return f"the checkpoint names classes outside this run's {classes}"
    if bool(((count > 0) & (other < 0)).any()):
        return "the checkpoint has margins without their largest other class"
    batches = state.get("batches")
    if not isinstance(batches, dict) or not all(
        isinstance(batches.get(k), int) and batches[k] >= 0 for k in ("used", "mixed")
    ):
        return "the checkpoint's batch counts are malformed"
    return None


def margin_suspects(sums: torch.Tensor, counts: torch.Tensor, other: torch.Tensor) -> Suspects:
    """Training images whose mean margin (``sums / counts``) is negative, lowest first;
    images never trained on are left out. ``other`` is each image's latest largest other
    class, the suggestion."""
    sums, counts, other = sums.double().cpu(), counts.double().cpu(), other.long().cpu()
    seen = counts > 0
    mean = torch.where(seen, sums / counts.clamp(min=1), torch.inf)
    chosen = torch.nonzero(mean < 0)[:, 0]
    order = chosen[mean[chosen].argsort(stable=True)]
    return Suspects(order, other[order], mean[order].float())


def confident_suspects(probs: torch.Tensor, labels: torch.Tensor) -> Suspects:
    """Images of an evaluation split the model disagrees with: its most probable class, or
    its confident class (confident learning), is not the given label; lowest probability of
    the given label first. :attr:`Suspects.estimated` is confident learning's count of wrong
    labels (images whose confident class differs from their label).

    Confident learning alone misses wrong labels whose true class is less probable than that
    class's mean (its threshold); the model's own disagreement catches those, and the ranking
    by self-confidence puts wrong labels ahead of the model's honest mistakes.

    Args:
        probs: calibrated class probabilities, ``N x C``.
        labels: given labels, ``N`` (negative: unknown, never suspect).
    """
    probs, labels = probs.double().cpu(), labels.long().cpu()
    known = labels >= 0
    num_classes = probs.shape[1]
    if not known.any():
        empty = torch.empty(0, dtype=torch.long)
        return Suspects(empty, empty, torch.empty(0), 0)
    given = labels.clamp(min=0)
    # Class j's threshold: the mean probability of j over the images labelled j.
    totals = torch.zeros(num_classes, dtype=torch.float64)
    totals.index_add_(0, given[known], probs[known].gather(1, given[known, None])[:, 0])
    counts = torch.bincount(given[known], minlength=num_classes).double()
    # A class nobody is labelled with has no threshold: it cannot be anyone's confident class.
    thresholds = torch.where(counts > 0, totals / counts.clamp(min=1), torch.inf)
    above = torch.where(probs >= thresholds, probs, -1.0)
    best, confident = above.max(1)
    flagged = known & (best >= 0) & (confident != given)
    predicted = probs.argmax(1)  # any class, also one this split has no images of
    suspect = flagged | (known & (predicted != given))
    suggested = torch.where(flagged, confident, predicted)
    chosen = torch.nonzero(suspect)[:, 0]
    self_confidence = probs[chosen].gather(1, given[chosen, None])[:, 0]
    keep = self_confidence.argsort(stable=True)
    order = chosen[keep]
    return Suspects(order, suggested[order], self_confidence[keep].float(), int(flagged.sum()))


#: Columns of ``label_issues.csv`` (``row``: the annotations file and line, for JSONL and CSV
#: data).
COLUMNS = ("split", "path", "given", "suggested", "score", "row")
#: Splits in file order.
SPLITS = ("train", "val", "test")


class LabelIssues(Callback):
    """Write ``label_issues.csv`` (``split, path, given, suggested, score, row``; most suspect
    first within each split; ``row``: the annotations file and line of JSONL or CSV data),
    ``label_issues.jsonl`` (the same rows in the ``annotations.jsonl`` schema: ``image``,
    ``suffix`` set to the suggested class, ``metadata``), ``label_issues.json`` (counts,
    method, cost) and ``label_issues.png`` (the top suspects with given and suggested labels)
    into the run folder.

    Training images: mean margin (given logit minus largest other) over every time they were
    trained on; rows with a negative mean, lowest first. Validation (the last evaluated epoch of
    fit) and test images: confident learning on probabilities calibrated by a temperature fitted
    on the split's own logits; rows whose confident class differs from the given label, lowest
    probability of the given label first. The training sums live in this callback's checkpoint
    state, so a resumed run keeps them.

    Args:
        num_images: suspects per split shown in ``label_issues.png``.
    """

    def __init__(self, num_images: int = 8) -> None:
        self.num_images = num_images
        self._synced: Margins | None = None
        self._delta: Margins | None = None
        self._restored: dict[str, Any] | None = None
        self._batches = {"used": 0, "mixed": 0}
        self._eval: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._found: dict[str, Suspects] = {}
        self._seconds = 0.0
        self._scored = 0
        self._split = ""

    # -- training images ------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Size the per-image sums for the training split (kept from a resumed checkpoint
        when it holds them for a split of the same size)."""
        files = image_data(trainer).files("train")
        size = len(files[0]) if files is not None else 0
        self._split = _split_digest(files)
        device = pl_module.device
        self._synced = Margins.zeros(size, device)
        self._delta = Margins.zeros(size, device)
        restored, self._restored = self._restored, None
        classes = len(classifier_module(pl_module).class_names)
        problem = margins_problem(restored, size, classes) if restored is not None else None
        if restored is not None and problem is None and restored.get("split") != self._split:
            problem = "the checkpoint's sums are for other training files or labels"
        if restored is not None and problem is None:
            self._synced.add(Margins(restored["sum"], restored["count"], restored["other"]))
            self._batches = {k: int(restored["batches"][k]) for k in ("used", "mixed")}
        elif problem is not None:
            warnings.warn(f"label issues: {problem}; starting the sums again", stacklevel=2)
        self._found = {}

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Add each image's margin to its sum (on the device: no synchronisation)."""
        if self._delta is None:
            return
        start = time.perf_counter()
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if logits is None:
            self._batches["mixed"] += 1
            return
        labels, indices = batch[1], batch[2]
        keep = labels >= 0  # unreadable files carry a negative label: weight 0, no mask
        margin, other = margins(logits, labels.clamp(min=0))
        self._delta.update(indices, margin, other, keep)
        self._batches["used"] += 1
        self._seconds += time.perf_counter() - start

    def _sync(self, trainer: pl.Trainer) -> None:
        """Move the sums since the last call, over every process, into the totals (every
        process calls it, at the same hooks)."""
        if self._delta is None or self._synced is None:
            return
        strategy = trainer.strategy
        other = self._delta.other
        if trainer.world_size > 1:
            from classifier.dist import max_over_processes

            other = max_over_processes(other).to(other.device)
        reduced = Margins(
            strategy.reduce(self._delta.sum, reduce_op="sum"),
            strategy.reduce(self._delta.count, reduce_op="sum"),
            other,
        )
        self._synced.add(reduced)
        self._delta = Margins.zeros(len(other), other.device)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The per-image sums: the totals of every process up to the last evaluation, and
        this process's since (with one process: all of them). Summed at the start of each
        evaluation and when fit ends, where every process is; never at an epoch's end, where
        a progress bar on rank 0 alone may be syncing metrics."""
        if self._synced is None or self._delta is None:
            return dict(self._restored) if self._restored is not None else {}
        total = Margins(self._synced.sum.clone(), self._synced.count.clone(), self._synced.other)
        total.add(self._delta)
        return {
            "sum": total.sum.cpu(),
            "count": total.count.cpu(),
            "other": total.other.cpu(),
            "batches": dict(self._batches),
            "split": self._split,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's sums until ``on_fit_start`` knows the training split."""
        if {"sum", "count", "other", "batches"} <= set(state_dict):
            self._restored = state_dict

    # -- validation and test images ---------------------------------------------------------

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add the training sums so far to the totals (a checkpoint saved after this
        evaluation holds them all); start collecting the epoch's logits."""
        if trainer.state.fn == "fit":
            self._sync(trainer)
        self._eval = []

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's logits on the device (read back once, at the epoch's end)."""
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._keep(outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the epoch's logits on the device: the last epoch's are scored when fit ends."""
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val, self._eval = self._eval, []

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the test logits."""
        self._eval = []

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's logits on the device."""
        self._keep(outputs, batch)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score the test images and write the files (with the fit's rows, after a fit)."""
        collected, self._eval = self._eval, []
        self._score_eval(trainer, "test", collected)
        self._write(trainer, pl_module)

    def _keep(self, outputs: Any, batch: Any) -> None:
        if isinstance(outputs, dict) and "logits" in outputs and "indices" in outputs:
            self._eval.append((outputs["logits"].float(), batch[1], outputs["indices"]))

    def _score_eval(
        self,
        trainer: pl.Trainer,
        split: str,
        collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> None:
        """Gather ``collected`` from every process (each calls it) and score it on rank 0."""
        start = time.perf_counter()
        found = gather_batches(collected)
        if not trainer.is_global_zero or found is None:
            return
        logits, labels, indices = found
        # Several processes may evaluate an image twice (padded shards): keep one of each.
        order = torch.argsort(indices, stable=True)
        logits, labels, indices = logits[order], labels[order], indices[order]
        first = torch.ones(len(indices), dtype=torch.bool)
        first[1:] = indices[1:] != indices[:-1]
        logits, labels, indices = logits[first], labels[first], indices[first]
        known = labels >= 0
        temperature = 1.0
        if int(known.sum()) >= MIN_IMAGES:
            temperature = fit_temperature(logits[known], labels[known])
        suspects = confident_suspects((logits.double() / temperature).softmax(1), labels)
        self._found[split] = Suspects(
            indices[suspects.indices], suspects.suggested, suspects.scores, suspects.estimated
        )
        self._seconds += time.perf_counter() - start

    # -- files ------------------------------------------------------------------------------

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score the training images and write the files."""
        if self._synced is None:
            return
        collected, self._val = self._val, []
        self._score_eval(trainer, "val", collected)  # every process takes part
        start = time.perf_counter()
        self._sync(trainer)
        totals = self._synced
        self._found["train"] = margin_suspects(totals.sum, totals.count, totals.other)
        self._scored = int((totals.count > 0).sum())
        self._seconds += time.perf_counter() - start
        if not trainer.interrupted:
            self._write(trainer, pl_module)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._found:
            return
        data, names = image_data(trainer), classifier_module(pl_module).class_names
        rows: list[tuple[str, str, str, str, float, str]] = []
        annotated: list[dict[str, Any]] = []
        summary: dict[str, dict[str, Any]] = {}
        for split in (s for s in SPLITS if s in self._found):
            files = data.files(split)
            if files is None:
                continue
            paths, labels = files
            origins, attributes = rows_of(data, split) or ((), ())
            found = self._found[split]
            for index, suggested, score in zip(
                found.indices.tolist(), found.suggested.tolist(), found.scores.tolist(), strict=True
            ):
                given, origin = names[int(labels[index])], origins[index] if origins else ""
                row = (split, str(paths[index]), given, names[suggested], round(score, 4), origin)
                meta = json.loads(attributes[index]) if attributes else {}
                rows.append(row)
                annotated.append(suggestion(paths[index], names[suggested], meta, row))
            summary[split] = {
                "images": len(paths),
                "suspects": len(found),
                "method": "area under the margin" if split == "train" else "confident learning",
            }
            if found.estimated >= 0:
                summary[split]["estimated_wrong"] = found.estimated
        if "train" in summary:
            summary["train"]["scored_images"] = self._scored
            summary["train"]["batches"] = dict(self._batches)  # rank 0's
        summary["seconds"] = {"scoring": round(self._seconds, 3)}
        folder = run_dir(trainer)
        write_csv(folder / "label_issues.csv", COLUMNS, rows)
        write_jsonl(folder / "label_issues.jsonl", annotated)
        write_json(folder / "label_issues.json", summary)
        _hand_report(folder, summary, rows)
        draw = partial(_draw, data, names, dict(self._found), folder, self.num_images)
        submit_figure(f"label_issues@{id(self)}", draw)
        mixed = self._batches["mixed"]
        if mixed and "train" in summary:
            used = self._batches["used"]
            warnings.warn(
                f"label issues: {mixed} of {mixed + used} training batches were mixed "
                "(MixUp/CutMix) and not scored",
                stacklevel=2,
            )


def _hand_report(
    folder: Path, summary: dict[str, Any], rows: list[tuple[str, str, str, str, float, str]]
) -> None:
    """Hand ``report.html`` each split's counts and its most suspect images."""
    report_items.note(
        folder,
        "labels",
        "labels/note",
        "Images whose given label the model disagrees with, most suspect first (train: mean "
        "margin of the given class over training, negative; val/test: calibrated probability of "
        "the given label, with confident learning's estimate of how many labels are wrong). "
        "Every row is in label_issues.csv.",
    )
    batches = summary.get("train", {}).get("batches", {})
    if batches.get("mixed"):
        mixed, used = int(batches["mixed"]), int(batches.get("used", 0))
        text = (
            f"{mixed} of {mixed + used} training batches were mixed by MixUp/CutMix and not scored."
        )
        report_items.note(folder, "labels", "labels/mixed", text)
    for split in (s for s in SPLITS if s in summary):
        counts = summary[split]
        row = [split, counts["images"], counts["suspects"], counts.get("estimated_wrong", "")]
        counted = ("split", "images", "suspects", "estimated wrong")
        report_items.table(folder, "labels", f"labels/{split}", counted, [row])
        top = [r[:5] for r in rows if r[0] == split][:SHOWN]
        listed = ("split", "path", "given", "suggested", "score")
        report_items.table(folder, "labels", f"labels/{split}/top", listed, top)


#: Most suspect images of each split listed in ``report.html``.
SHOWN = 10


def suggestion(
    path: Path, label: str, metadata: Any, row: tuple[str, str, str, str, float, str]
) -> dict[str, Any]:
    """One ``label_issues.jsonl`` row: ``annotations.jsonl``'s ``image`` (absolute, so it
    reads from anywhere), ``suffix`` (the suggested class) and ``metadata``, with the split,
    the given label, the score and the row it came from."""
    split, _, given, _, score, origin = row
    return {
        "image": os.path.abspath(path),
        "suffix": label,
        "metadata": metadata,
        "split": split,
        "given": given,
        "score": score,
        "row": origin,
    }


def _split_digest(files: tuple[Sequence[Path], Any] | None) -> str:
    """A digest of the training files and their labels, in order: a checkpoint's sums belong
    to the images at the same positions only while it matches (files moved to another class,
    renamed, added or removed change it)."""
    if files is None:
        return ""
    from classifier.splits import Paths

    paths = files[0] if isinstance(files[0], Paths) else Paths.of(files[0])
    digest = hashlib.sha256(paths.digest().encode())
    digest.update(np.asarray(files[1], dtype=np.int64).tobytes())
    return digest.hexdigest()


def _draw(
    data: Any, names: list[str], found: dict[str, Suspects], folder: Path, count: int
) -> None:
    """``label_issues.png``: each split's top suspects as evaluated, given and suggested
    labels (figure thread)."""
    pictures, captions = [], []
    for split, suspects in sorted(found.items(), key=lambda item: SPLITS.index(item[0])):
        files = data.files(split)
        if files is None:
            continue
        labels = files[1]
        for index, suggested in zip(
            suspects.indices[:count].tolist(), suspects.suggested[:count].tolist(), strict=True
        ):
            pictures.append(as_uint8(data.eval_image(split, index)))
            captions.append(
                f"{split}\ngiven: {names[int(labels[index])]}\nlikely: {names[suggested]}"
            )
    if not pictures:
        return
    title = "Probably mislabelled: given label, and the likelier class"
    grid = picture_grid(pictures, captions, ["red"] * len(pictures), title)
    path = save_png(grid, folder / "label_issues.png")
    evaluated = "fit" if {"train", "val"} & set(found) else "test"  # a later test: beside fit's
    alt = "suspect labels" if evaluated == "fit" else "suspect test labels"
    report_items.figure(path, "labels", alt, key=f"labels/figure/{evaluated}")
