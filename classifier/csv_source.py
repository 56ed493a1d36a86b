"""Splits given as CSV manifests: ``path,label``, an optional ``split`` column and optional
attribute columns (every other column). Paths are relative to the manifest. Either one file
whose ``split`` column says where each row goes (``train``, ``val`` or ``valid``, ``test``; no
such column: all of them train), or one file per split (``train.csv``, ``val.csv`` or
``valid.csv``, ``test.csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

from classifier.manifest import RowReader, Rows
from classifier.splits import DataError

#: The column of each row's image.
PATH = "path"
#: The column of each row's split, in a single manifest.
SPLIT = "split"
#: What the ``split`` column may say, and the split it means.
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "test": "test"}


def read_table(manifest: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the ``(line, values)`` rows of ``manifest``.

    Raises:
        DataError: it cannot be read, is not UTF-8 or CSV, or has no header.
    """
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as text:
            table = csv.reader(text)
            header = next(table, None)
            rows = [(table.line_num, values) for values in table if values]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read the CSV manifest {manifest}: {error}") from error
    if not header:
        raise DataError(f"{manifest} is empty: it needs a header such as path,label")
    return [h.strip() for h in header], rows


def split_names(header: list[str], rows: list[tuple[int, list[str]]]) -> set[str]:
    """The splits a single manifest's rows name (``valid`` as ``val``); without a ``split``
    column every row is a training row (``val_fraction`` can hold some out)."""
    if SPLIT not in header:
        return {"train"}
    column = header.index(SPLIT)
    return {
        SPLIT_VALUES[v[column].strip()]
        for _, v in rows
        if len(v) > column and v[column].strip() in SPLIT_VALUES
    }


def read_csv(manifest: Path, name: str | None, reader: RowReader, label_key: str) -> Rows:
    """The rows of ``manifest`` (only those of split ``name`` when it has a ``split``
    column; rows naming no known split are rejected when reading ``train``).

    Raises:
        DataError: the manifest cannot be read or lacks the path or label column.
    """
    header, rows = read_table(manifest)
    needed = [PATH] + ([label_key] if reader.label_required else [])
    lacking = [c for c in needed if c not in header]
    if lacking:
        raise DataError(
            f"{manifest} has no {lacking[0]!r} column (header: {','.join(header)}); it needs "
            f"{PATH},{label_key} and optionally {SPLIT} and attribute columns"
        )
    split = header.index(SPLIT) if name is not None and SPLIT in header else None
    label = header.index(label_key) if label_key in header else None
    extra = [(i, c) for i, c in enumerate(header) if c not in (PATH, label_key, SPLIT)]
    for line, values in rows:
        origin = f"{manifest}:{line}"
        if len(values) != len(header):
            reader.reject(origin, f"{len(values)} values for {len(header)} columns")
            continue
        if split is not None:
            where = SPLIT_VALUES.get(values[split].strip())
            if where is None and name == "train":
                reader.reject(origin, f"split {values[split]!r} is not train, val/valid or test")
            if where != name:
                continue
        given = None if label is None else values[label]
        attributes = {c: values[i] for i, c in extra}
        reader.add(origin, manifest.parent, values[header.index(PATH)], given, attributes)
    return reader.rows
