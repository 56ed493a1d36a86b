"""Writing ``predictions.csv`` for ``classifier predict``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from classifier.callback_contract import classifier_module, image_data, rows_of
from classifier.dist import gather_objects
from classifier.errors import ConfigError
from classifier.file_io import plain_name, run_dir, write_csv, write_jsonl
from classifier.image_dataset import UNREADABLE
from classifier.predictions_format import NON_FINITE, columns


class PredictionWriter(Callback):
    """Write one CSV row per image: path, predicted class, calibrated confidence, whether the
    prediction is accepted (``true``/``false``; empty without an accept/reject rule), true
    class, top-k, error.

    ``classifier predict`` adds this callback when the config has none. The true class column
    appears when the images lie in folders named like the classes. A file that could not be
    read keeps its row, with empty predictions and ``unreadable`` in the ``error`` column.

    A ``filename`` ending in ``.jsonl`` writes rows in the ``annotations.jsonl`` schema
    instead, which a tool reading that schema takes as labels: ``image`` (absolute path),
    ``suffix`` (the predicted class; ``null`` when unreadable), ``metadata`` (the input row's
    when ``predict_dir`` holds ``annotations.jsonl`` files or is a CSV manifest, else ``{}``),
    ``probabilities`` (class: calibrated probability), ``confidence``, ``accepted``, ``true``,
    ``row`` (the input row's file and line) and ``error``.

    Args:
        filename: file name inside the results folder (a plain name: no folders); ``.jsonl``
            writes JSON lines, anything else CSV.
        top_k: classes listed per image (all classes when there are fewer).
    """

    def __init__(self, filename: str = "predictions.csv", top_k: int = 5) -> None:
        self.filename = filename
        self.top_k = top_k
        self._rows: list[tuple[int, int, list[float], bool | None]] = []
        self.path: Path | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the options before anything is predicted (here rather than in ``__init__``:
        the command line reports errors raised here in one line)."""
        if self.top_k < 1:
            raise ConfigError(f"PredictionWriter top_k must be at least 1, got {self.top_k}")
        plain_name(self.filename, "PredictionWriter filename")

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a new table."""
        self._rows = []

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep (index, label, probabilities, accepted) of each image (accepted: ``None``
        without an accept/reject rule)."""
        probs = outputs["probs"].cpu()
        count = len(probs)
        accepted = outputs["accepted"].tolist() if "accepted" in outputs else [None] * count
        for index, label, row, ok in zip(
            outputs["indices"].tolist(),
            outputs["labels"].tolist(),
            probs.tolist(),
            accepted,
            strict=True,
        ):
            self._rows.append((index, label, row, ok))

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather every rank's rows and write the file on rank 0."""
        rows = sorted(r for part in gather_objects(self._rows) for r in part)
        if not trainer.is_global_zero:
            return
        names = classifier_module(pl_module).class_names
        found = image_data(trainer).files("predict")
        assert found is not None, "predict reads --data.predict_dir"
        paths, truth = found
        self.path = run_dir(trainer) / self.filename
        if self.filename.endswith(".jsonl"):
            rowed = rows_of(image_data(trainer), "predict")
            write_jsonl(self.path, [json_row(r, paths, truth, names, rowed) for r in rows])
            rank_zero_info(f"Wrote {len(rows)} predictions to {self.path}")
            return
        k = min(self.top_k, len(names))
        has_truth = any(label >= 0 for label in truth)
        table = [
            self._row(paths[i], label, int(truth[i]), probs, names, k, has_truth, ok)
            for i, label, probs, ok in rows
        ]
        write_csv(self.path, columns(k, has_truth), table)
        errors = [error_of(label, probs) for _, label, probs, _ in rows]
        failed, broken = errors.count("unreadable"), errors.count(NON_FINITE)
        note = f"; {failed} unreadable file(s) marked in its error column" if failed else ""
        if broken:
            note += f"; {broken} with NaN or infinite outputs marked {NON_FINITE!r}"
        rejected = sum(r[3] is False and not e for r, e in zip(rows, errors, strict=True))
        if any(r[3] is not None for r in rows):
            note += f"; {rejected} not accepted (accepted column)"
        rank_zero_info(f"Wrote {len(table)} predictions to {self.path}{note}")

    @staticmethod
    def _row(
        path: Path,
        label: int,
        true: int,
        probs: list[float],
        names: list[str],
        k: int,
        has_truth: bool,
        accepted: bool | None = None,
    ) -> list[Any]:
        """One CSV row; an unreadable file (``label`` is UNREADABLE) gets empty predictions
        and ``unreadable``, and keeps its true class."""
        known = [names[true] if true >= 0 else ""] if has_truth else []
        error = error_of(label, probs)
        if error:
            return [str(path), "", "", "", *known] + [""] * (2 * k) + [error]
        values, order = torch.tensor(probs).topk(k)
        verdict = "" if accepted is None else str(bool(accepted)).lower()
        line: list[Any] = [str(path), names[order[0]], round(float(values[0]), 6), verdict, *known]
        for value, cls in zip(values.tolist(), order.tolist(), strict=True):
            line += [names[cls], round(value, 6)]
        return [*line, ""]


def error_of(label: int, probs: list[float]) -> str:
    """What keeps an image from having a prediction: ``unreadable`` (its file), the
    :data:`~classifier.predictions_format.NON_FINITE` mark (NaN or infinite outputs), or
    ``""`` (nothing)."""
    if label == UNREADABLE:
        return "unreadable"
    return "" if all(map(math.isfinite, probs)) else NON_FINITE


def json_row(
    row: tuple[int, int, list[float], bool | None],
    paths: Sequence[Path],
    truth: Any,
    names: list[str],
    rowed: tuple[Sequence[str], Sequence[str]] | None,
) -> dict[str, Any]:
    """One prediction in the ``annotations.jsonl`` schema (see :class:`PredictionWriter`)."""
    index, label, probs, accepted = row
    error = error_of(label, probs)
    no_prediction = bool(error)
    best = 0 if no_prediction else max(range(len(probs)), key=probs.__getitem__)
    true = int(truth[index])
    probabilities = zip(names, probs, strict=True)
    return {
        "image": os.path.abspath(paths[index]),
        "suffix": None if no_prediction else names[best],
        "metadata": json.loads(rowed[1][index]) if rowed else {},
        "probabilities": {} if no_prediction else {n: round(p, 6) for n, p in probabilities},
        "confidence": None if no_prediction else round(probs[best], 6),
        "true": names[true] if true >= 0 else None,
        "row": rowed[0][index] if rowed else "",
        "accepted": None if no_prediction else accepted,
        "error": error,
    }
