"""Where a data module's splits come from: class folders, ``annotations.jsonl`` files or CSV
manifests (``data.source``; ``auto`` tells them apart by what ``data_dir`` holds).

Each gives the same :class:`~classifier.splits.Split` (files, labels in the train class map,
stat keys), so the scan and its cache, the health check, ``val_fraction``, the sampler, label
issues, pictures, ``predict``, resume, DDP and DALI read every source the same way. The
validation split may be called ``val`` or ``valid`` (not both).
"""

from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info

from classifier.manifest import (
    RowReader,
    Rows,
    classes_of,
    holds_annotations,
    read_csv,
    read_jsonl,
    read_table,
    split_names,
    to_split,
    unreferenced,
)
from classifier.splits import DataError, Split, class_dirs, read_split, read_unlabelled

SourceKind = Literal["auto", "folders", "jsonl", "csv"]
#: The folder (or manifest) names each split may have, in the order looked for.
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


class Source:
    """The splits of ``data_dir`` as one of the three sources.

    Args:
        data_dir: a folder with ``train/``, ``val/`` or ``valid/`` and ``test/`` (class folders
            or ``annotations.jsonl`` files), or with CSV manifests, or one CSV manifest.
        kind: ``folders``, ``jsonl``, ``csv``, or ``auto`` to detect it.
        label_key: the label's key (JSONL) or column (CSV); ``None``: ``suffix`` for JSONL,
            ``label`` for CSV.
    """

    def __init__(self, data_dir: Path, kind: SourceKind = "auto", label_key: str | None = None):
        self.data_dir = data_dir
        self.requested = kind
        self.label_key = label_key
        self._train_rows: Rows | None = None
        self._announced = False

    @cached_property
    def kind(self) -> Literal["folders", "jsonl", "csv"]:
        """The source, as set or detected."""
        if self.requested != "auto":
            return self.requested
        if self.data_dir.suffix.lower() == ".csv" and self.data_dir.is_file():
            return "csv"
        train = self.data_dir / "train"
        if train.is_dir():
            return "jsonl" if holds_annotations(train) else "folders"
        return "csv" if self._manifests() else "folders"

    @property
    def key(self) -> str:
        """The label's key or column."""
        return self.label_key or ("label" if self.kind == "csv" else "suffix")

    def _manifests(self) -> list[Path]:
        if self.data_dir.is_file():
            return [self.data_dir]
        if not self.data_dir.is_dir():
            return []
        return sorted(p for p in self.data_dir.glob("*.csv") if p.is_file())

    @cached_property
    def _single(self) -> Path | None:
        """The one manifest with a ``split`` column, or ``None`` for one manifest per split."""
        found = self._manifests()
        named = {p.stem for p in found}
        if "train" in named:
            return None
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DataError(
                f"data.source csv: {self.data_dir} needs train.csv (and val.csv or valid.csv, "
                f"test.csv) or exactly one manifest with a split column; found {listed}"
            )
        return found[0]

    @cached_property
    def _single_splits(self) -> set[str]:
        assert self._single is not None
        header, rows, _ = read_table(self._single)
        return split_names(header, rows)

    def _candidates(self, name: str) -> list[Path]:
        """The paths that hold split ``name``, existing ones only."""
        names = SPLIT_NAMES[name]
        if self.kind == "csv":
            if self._single is not None:
                return [self._single] if name in self._single_splits else []
            found = [self.data_dir / f"{n}.csv" for n in names]
            return [p for p in found if p.is_file()]
        return [self.data_dir / n for n in names if (self.data_dir / n).is_dir()]

    def present(self, name: str) -> bool:
        """Whether the data has split ``name``."""
        return self.data_dir.exists() and bool(self._candidates(name))

    def root(self, name: str) -> Path:
        """The folder of split ``name`` (or its manifest).

        Raises:
            DataError: it is missing, or both ``val`` and ``valid`` exist.
        """
        if not self.data_dir.exists():
            raise DataError(f"data_dir {self.data_dir} does not exist (set --data.data_dir).")
        if not self._announced:
            self._announced = True
            rank_zero_info(self.describe())
        found = self._candidates(name)
        if len(found) > 1:
            raise DataError(
                f"{found[0]} and {found[1]} both exist: keep one validation split (val or valid)."
            )
        if not found:
            hint = " or hold out part of train: --data.val_fraction 0.1" if name == "val" else ""
            raise DataError(f"{self._missing(name)}{hint}.")
        return found[0]

    def _missing(self, name: str) -> str:
        both = "/".join(SPLIT_NAMES[name])
        if self.kind == "csv":
            return f"no {both} rows or {both}.csv in {self.data_dir} (data.source: csv)"
        what = "annotations.jsonl files" if self.kind == "jsonl" else "one folder per class"
        return (
            f"{self.data_dir / SPLIT_NAMES[name][0]} is missing: data_dir must hold train/ and "
            f"val/ or valid/ (and optionally test/), each with {what}"
        )

    def describe(self) -> str:
        """One line: the source and the split folders (or manifests) it reads."""
        names = [self._candidates(n)[0].name for n in SPLIT_NAMES if self.present(n)]
        if self.kind == "csv" and self._single is not None:
            names = [f"{self._single.name}: {n}" for n in SPLIT_NAMES if self.present(n)]
        return f"Data: {self.kind} from {self.data_dir} ({', '.join(names)})"

    def class_names(self) -> list[str]:
        """The class names: train's folders, or the sorted labels of train's rows.

        Raises:
            DataError: train has no class folder, no usable row, or one class only.
        """
        root = self.root("train")
        if self.kind == "folders":
            if not (names := list(class_dirs(root))):
                raise DataError(f"{root} has no class folders.")
        else:
            self._train_rows = self._train_rows or self._rows("train", root, True)
            if not (names := classes_of(self._train_rows)):
                rejected = "; ".join(
                    f"{o}: {r}" for o, r in list(self._train_rows.rejected.items())[:3]
                )
                raise DataError(f"no usable annotation rows in {root}. {rejected}".strip())
        if len(names) == 1:
            raise DataError(
                f"train has one class, {names[0]!r} ({root}); a classifier needs two or more."
            )
        return names

    def check_classes(self, class_names: list[str]) -> None:
        """Refuse data whose train classes differ from a checkpoint's ``class_names``.

        Raises:
            DataError: naming both lists.
        """
        if self.present("train") and (found := self.class_names()) != class_names:
            raise DataError(
                f"the checkpoint's classes {class_names} differ from the folders (labels) of "
                f"{self.root('train')}: {found}. Use the data the model was trained on."
            )

    def _rows(self, name: str, root: Path, required: bool) -> Rows:
        reader = RowReader(self.data_dir if self.data_dir.is_dir() else root.parent, required)
        if self.kind == "jsonl":
            rows = read_jsonl(root, reader, self.key)
            self._check_unreferenced(root, reader.named)
            return rows
        single = self._single is not None
        return read_csv(root, name if single else None, reader, self.key)

    def _check_unreferenced(self, root: Path, named: set[str]) -> None:
        """Refuse (``auto``) or warn about (``jsonl``) images of a split that no row names:
        a stray ``annotations.jsonl`` must not silently replace a folder dataset.

        Raises:
            DataError: ``data.source`` is ``auto`` and some images are named by no row.
        """
        count, example = unreferenced(root, named)
        if not count:
            return
        if self.requested == "auto":
            raise DataError(
                f"{root} holds annotations.jsonl files and {count} image(s) that no row names "
                f"(e.g. {example}); set data.source: folders (class folders) or jsonl (the "
                "rows only)."
            )
        warnings.warn(
            f"{root}: {count} image(s) that no annotations.jsonl row names are not used",
            stacklevel=2,
        )

    def read(self, name: str, class_names: list[str]) -> Split:
        """Split ``name`` labelled in ``class_names``.

        Raises:
            DataError: it is missing or holds no usable image (or row).
        """
        root = self.root(name)
        if self.kind == "folders":
            return read_split(name, root, class_names)
        rows = self._train_rows if name == "train" and self._train_rows else None
        self._train_rows = None
        rows = rows or self._rows(name, root, True)
        folder = root if root.is_dir() else root.parent
        return to_split(name, folder, rows, class_names)


def read_predict(folder: Path, class_names: list[str], label_key: str | None) -> Split:
    """The images to predict: a folder tree (:func:`~classifier.splits.read_unlabelled`), a
    folder holding ``annotations.jsonl`` files, or a CSV manifest; rows keep their label (the
    ground truth) when it names a class, and their attributes.

    Raises:
        DataError: nothing to predict there.
    """
    if folder.is_file() and folder.suffix.lower() == ".csv":
        reader = RowReader(folder.parent, label_required=False)
        rows = read_csv(folder, None, reader, label_key or "label")
        return to_split("predict", folder.parent, rows, class_names)
    if folder.is_dir() and holds_annotations(folder):
        rows = read_jsonl(folder, RowReader(folder, label_required=False), label_key or "suffix")
        return to_split("predict", folder, rows, class_names)
    return read_unlabelled(folder, class_names)
