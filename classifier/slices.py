"""``Slices``: metrics per attribute value of the evaluated rows (JSONL ``metadata``, extra CSV
columns), in ``slices_val.csv`` (fit's last validation, ``validate``) and ``slices_test.csv``,
and in ``report.html``'s *Slices* section.

Metrics per attribute value ("slices"): for rows that carry attributes (a JSONL row's
``metadata``, a CSV row's extra columns), the images, top-1, balanced accuracy and ECE of each
value of each attribute, worst first, and which slices fall far below the split's accuracy.

NumPy only: :class:`~classifier.slices.Slices` collects the predictions and hands the report
its tables through :mod:`~classifier.report_items`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module, optional_image_data, rows_of
from classifier.dist import gather_batches
from classifier.file_io import run_dir, write_csv

#: Columns of ``slices_<split>.csv``.
COLUMNS = ("attribute", "value", "images", "top1", "balanced_acc", "ece", "warning")
#: Equal-width confidence bins of the ECE (as the split's own ``ece``).
BINS = 15
#: Most distinct values one attribute may have and still be sliced (an ID is no attribute).
MAX_VALUES = 100
#: Most attributes sliced (the first by name); the others are named in a warning.
MAX_ATTRIBUTES = 100


@dataclass
class Predictions:
    """One split's evaluated images.

    Attributes:
        labels: given class of each image (negative: unreadable, left out).
        predicted: predicted class of each image.
        confidence: calibrated probability of the predicted class.
    """

    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray


def flatten(attributes: Any, prefix: str = "", depth: int = 0) -> dict[str, str]:
    """``{name: value}`` of a row's attributes: nested objects as ``a.b`` (four levels deep at
    most), values as text (JSON's ``true``, ``null``); lists are left out."""
    if not isinstance(attributes, dict) or depth > 3:
        return {}
    found: dict[str, str] = {}
    for key, value in attributes.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(flatten(value, f"{name}.", depth + 1))
        elif not isinstance(value, list):
            found[name] = value if isinstance(value, str) else json.dumps(value)
    return found


def groups(attributes: Sequence[str]) -> tuple[dict[tuple[str, str], list[int]], list[str]]:
    """The rows (indices) of each ``(attribute, value)``, and the attributes left out: those
    with more than :data:`MAX_VALUES` values and those past the first :data:`MAX_ATTRIBUTES`
    (by name), so no metadata can make the report huge."""
    found: dict[tuple[str, str], list[int]] = {}
    for index, text in enumerate(attributes):
        for name, value in flatten(json.loads(text)).items():
            found.setdefault((name, value), []).append(index)
    values: dict[str, int] = {}
    for name, _ in found:
        values[name] = values.get(name, 0) + 1
    kept = set(sorted(n for n, count in values.items() if count <= MAX_VALUES)[:MAX_ATTRIBUTES])
    left_out = sorted(n for n in values if n not in kept)
    return {k: v for k, v in found.items() if k[0] in kept}, left_out


def left_out_note(split: str, left_out: list[str]) -> str | None:
    """One message naming the attributes that were not sliced, or ``None``."""
    if not left_out:
        return None
    more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
    return (
        f"{split}: {len(left_out)} attribute(s) not sliced (more than {MAX_VALUES} values, or "
        f"past the first {MAX_ATTRIBUTES} attributes): {', '.join(left_out[:5])}{more}"
    )


def _balanced(labels: np.ndarray, right: np.ndarray) -> float:
    recalls = [float(right[labels == c].mean()) for c in np.unique(labels)]
    return float(np.mean(recalls))


def _ece(confidence: np.ndarray, right: np.ndarray) -> float:
    bins = np.clip((confidence * BINS).astype(np.int64), 0, BINS - 1)
    gap = 0.0
    for b in np.unique(bins):
        inside = bins == b
        gap += abs(float(right[inside].sum()) - float(confidence[inside].sum()))
    return gap / len(confidence)


def table(
    found: Predictions,
    attributes: Sequence[str],
    calibrated: bool,
    min_images: int = 20,
    margin: float = 0.1,
) -> tuple[list[list[Any]], float, list[str]]:
    """``slices_<split>.csv`` rows (worst top-1 first), the split's top-1 and the attributes
    left out (:func:`groups`). A slice of
    ``min_images`` or more whose top-1 is more than ``margin`` below the split's is marked
    ``warning``; ECE only when ``calibrated``."""
    readable = found.labels >= 0
    right = found.predicted == found.labels
    overall = float(right[readable].mean()) if readable.any() else float("nan")
    rows: list[tuple[str, str, int, float, float, float | str, bool]] = []
    sliced, left_out = groups(attributes)
    for (name, value), members in sliced.items():
        chosen = np.asarray(members)
        chosen = chosen[readable[chosen]]
        if not len(chosen):
            continue
        top1 = float(right[chosen].mean())
        ece = _ece(found.confidence[chosen], right[chosen]) if calibrated else ""
        far = len(chosen) >= min_images and top1 < overall - margin
        balanced = _balanced(found.labels[chosen], right[chosen])
        rows.append((name, value, len(chosen), top1, balanced, ece, far))
    rows.sort(key=lambda r: (r[3], -r[2], r[0], r[1]))
    shown = [[*r[:3], *(_round(v) for v in r[3:6]), str(r[6]).lower()] for r in rows]
    return shown, overall, left_out


def _round(value: float | str) -> float | str:
    return value if isinstance(value, str) else round(value, 4)


def write(path: Path, rows: list[list[Any]]) -> None:
    """Write ``slices_<split>.csv`` and hand the report its *Slices* table, slices far below
    the split's accuracy marked."""
    write_csv(path, COLUMNS, rows)
    split = path.stem.removeprefix("slices_")
    report_items.note(
        path.parent,
        "slices",
        "slices/note",
        "Metrics per attribute value of the rows (JSONL metadata, CSV columns). Slices too "
        "small to judge are shown, never warned about.",
    )
    marked = [i for i, r in enumerate(rows) if r[6] == "true"]
    heading = f"{split} (worst top-1 first)"
    report_items.table(path.parent, "slices", f"slices/{split}", COLUMNS, rows, heading, marked)


def warning(split: str, rows: list[list[Any]], overall: float, margin: float) -> str | None:
    """One message naming the slices far below the split's top-1, or ``None``."""
    far = [r for r in rows if r[6] == "true"]
    if not far:
        return None
    listing = "; ".join(f"{r[0]}={r[1]}: {r[3]:.3f} on {r[2]} images" for r in far[:5])
    more = f" and {len(far) - 5} more" if len(far) > 5 else ""
    return (
        f"{split}: {len(far)} attribute slice(s) more than {margin:.0%} below the split's top-1 "
        f"{overall:.3f}: {listing}{more} (slices_{split}.csv)"
    )


class Slices(Callback):
    """Count, top-1, balanced accuracy and ECE (once ``Calibration`` fitted a temperature) of
    each value of each attribute of the validation and test rows, worst top-1 first, written as
    ``slices_<split>.csv`` in the run folder. Data without attributes (class folders) writes
    nothing.

    A slice of ``min_images`` or more whose top-1 is more than ``margin`` below the split's is
    marked in the file and the report and named in a warning (for fit: once, after its last
    validation).

    Args:
        min_images: smallest slice that is warned about (smaller ones are only shown).
        margin: how far (as a fraction, 0.1 = 10 points) below the split's top-1 a slice must
            fall to be warned about.
    """

    def __init__(self, min_images: int = 20, margin: float = 0.1) -> None:
        self.min_images = min_images
        self.margin = margin
        self._batches: list[tuple[torch.Tensor, ...]] = []
        self._pending: str | None = None
        self._active = False

    def _start(self, trainer: pl.Trainer, split: str) -> None:
        """Collect only when the split's rows carry attributes (the same on every process)."""
        self._batches = []
        data = optional_image_data(trainer)
        self._active = data is not None and rows_of(data, split) is not None

    def _keep(self, pl_module: pl.LightningModule, outputs: Any, batch: Any) -> None:
        if not self._active:
            return
        if isinstance(outputs, dict) and "logits" in outputs and "indices" in outputs:
            temperature = classifier_module(pl_module).temperature
            probs = (outputs["logits"].float() / temperature).softmax(dim=1)
            confidence, predicted = probs.max(dim=1)
            self._batches.append(
                (outputs["indices"].cpu(), batch[1].cpu(), predicted.cpu(), confidence.cpu())
            )

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        if not self._active:
            return
        found, self._batches = gather_batches(self._batches), []
        rowed = rows_of(optional_image_data(trainer), split)
        if found is None or rowed is None or not trainer.is_global_zero:
            return
        indices, labels, predicted, confidence = (t.numpy() for t in found)
        index, first = np.unique(indices, return_index=True)  # each image once, in split order
        attributes = [rowed[1][int(i)] for i in index]
        model = classifier_module(pl_module)
        calibrated = model.temperature != 1.0 or model.selector is not None
        predictions = Predictions(labels[first], predicted[first], confidence[first])
        rows, overall, left_out = table(
            predictions, attributes, calibrated, self.min_images, self.margin
        )
        notes = [warning(split, rows, overall, self.margin), left_out_note(split, left_out)]
        message = "\n".join(n for n in notes if n) or None
        if rows:
            write(run_dir(trainer) / f"slices_{split}.csv", rows)
        if trainer.state.fn == "fit":
            self._pending = message
        elif message:
            warnings.warn(message, stacklevel=2)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the epoch's predictions."""
        self._start(trainer, "val")

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
        """Keep the batch's predictions (not during the sanity check)."""
        if not trainer.sanity_checking:
            self._keep(pl_module, outputs, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``slices_val.csv`` (each epoch of fit replaces the last)."""
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn about the slices of fit's last validation."""
        if self._pending:
            warnings.warn(self._pending, stacklevel=2)
        self._pending = None

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the test predictions."""
        self._start(trainer, "test")

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
        """Keep the batch's predictions."""
        self._keep(pl_module, outputs, batch)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``slices_test.csv``."""
        self._finish(trainer, pl_module, "test")
