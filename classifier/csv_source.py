"""Splits given as CSV manifests: ``path,label``, an optional ``split`` column and optional
attribute columns (every other column). Paths are relative to the manifest. Either one file
whose ``split`` column says where each row goes (``train``, ``val`` or ``valid``, ``test``; no
such column: all of them train), or one file per split (``train.csv``, ``val.csv`` or
``valid.csv``, ``test.csv``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from classifier.manifest import RowReader, Rows, physical_lines, too_long
from classifier.splits import DataError

#: The column of each row's image.
PATH = "path"
#: The column of each row's split, in a single manifest.
SPLIT = "split"
#: What the ``split`` column may say, and the split it means.
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "test": "test"}


Table = tuple[list[str], list[tuple[int, list[str]]], dict[int, str]]


def read_table(manifest: Path) -> Table:
    """The header, the ``(line, values)`` rows of ``manifest`` and ``{line: reason}`` of the
    rows that cannot be read: a line over :data:`~classifier.manifest.MAX_LINE` bytes, bytes
    that are not UTF-8, a field over csv's limit, a NUL, and a quoted field running over
    several lines (an unterminated quote would swallow every row after it).

    Raises:
        DataError: it cannot be read, or its header cannot.
    """
    long: set[int] = set()
    try:
        with open(manifest, "rb") as binary:
            table = csv.reader(_decoded(binary, long))
            records = list(_records(table, long))
    except OSError as error:
        raise DataError(f"cannot read the CSV manifest {manifest}: {error.strerror}") from error
    records = [r for r in records if r[1] != []]  # blank lines
    if not records or isinstance(records[0][1], str) or not records[0][1]:
        reason = f": line {records[0][0]}: {records[0][1]}" if records else ""
        raise DataError(f"{manifest} has no readable header such as path,label{reason}")
    (_, header), rows = records[0], records[1:]
    good = [(n, v) for n, v in rows if isinstance(v, list)]
    bad = {n: v for n, v in rows if isinstance(v, str)}
    return [str(h).strip() for h in header], good, bad


def _decoded(binary: IO[bytes], long: set[int]) -> Iterator[str]:
    """Each line as text (bytes that are not UTF-8 kept as surrogates), a blank line for one
    over :data:`~classifier.manifest.MAX_LINE` bytes (its number added to ``long``)."""
    for number, line in enumerate(physical_lines(binary), 1):
        if line is None:
            long.add(number)
            yield "\n"
            continue
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        yield line.decode("utf-8", errors="surrogateescape")


def _records(table: Any, long: set[int]) -> Iterator[tuple[int, list[str] | str]]:
    """``(first line, values or why the record cannot be read)`` of each record."""
    last = 0
    while True:
        try:
            values: list[str] | str = next(table)
        except StopIteration:
            return
        except csv.Error as error:
            values = f"bad CSV ({error})"
        first, last = last + 1, table.line_num
        if first in long:
            values = too_long()
        elif last > first:
            values = f"a quoted field runs over lines {first}-{last}: an unterminated quote?"
        elif isinstance(values, list) and not _utf8(values):
            values = "not UTF-8 text"
        yield first, values


def _utf8(values: list[str]) -> bool:
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    header, rows, bad = read_table(manifest)
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
    listed = name in (None, "train")  # a single manifest's bad rows: listed once, with train
    for line, reason in bad.items():
        if listed:
            reader.reject(f"{manifest}:{line}", reason)
    for line, values in rows:
        origin = f"{manifest}:{line}"
        if len(values) != len(header):
            if listed:
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
