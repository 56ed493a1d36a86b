"""Splits read from rows of annotation files (JSONL, CSV) instead of class folders.

A reader (JSONL or CSV, below) hands each row to
:class:`RowReader`, which resolves its image against the annotations file's folder, keeps it
inside the data root (links resolved), checks that the file exists and keeps its label, where it
came from (``file:line``) and its attributes. Rows that cannot be used are rejected with a
reason, never dropped silently. :func:`to_split` then maps labels to the train class map and
makes the same :class:`~classifier.splits.Split` a folder walk makes, so every feature reads
either the same way.

Splits given as ``annotations.jsonl`` files, the layout of ``ortizeg/classifier-training``.

Every ``annotations.jsonl`` below a split's folder counts, at any depth; each non-blank line is
one row ``{"image": "crops/0001.jpg", "suffix": "23", "metadata": {...}}``: the image relative
to the annotations file, the label under a configurable key (``suffix``), and optional
attributes under ``metadata``. One image may appear in several rows.

Splits given as CSV manifests: ``path,label``, an optional ``split`` column and optional
attribute columns (every other column). Paths are relative to the manifest. Either one file
whose ``split`` column says where each row goes (``train``, ``val`` or ``valid``, ``test``; no
such column: all of them train), or one file per split (``train.csv``, ``val.csv`` or
``valid.csv``, ``test.csv``).
"""

from __future__ import annotations

import csv
import json
import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from classifier.errors import printable
from classifier.pil_decode import is_image_name
from classifier.splits import (
    IGNORED_DIRS,
    KEY_COLUMNS,
    MAX_FOLDERS,
    DataError,
    Paths,
    Split,
    Texts,
    class_name,
)

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


#: The annotation files' name.
ANNOTATIONS = "annotations.jsonl"


def annotation_files(root: Path) -> list[Path]:
    """Every ``annotations.jsonl`` below ``root``, sorted; links followed, each folder once.

    Raises:
        DataError: more than :data:`~classifier.splits.MAX_FOLDERS` folders.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        if len(seen) > MAX_FOLDERS:
            raise DataError(f"{root} holds more than {MAX_FOLDERS} folders; point at the data.")
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name in IGNORED_DIRS:
                    continue
                if _is_dir(entry):
                    pending.append(Path(entry.path))
                elif entry.name == ANNOTATIONS:
                    found.append(Path(entry.path))
    return sorted(found)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a link looping onto itself
        return False


def holds_annotations(root: Path) -> bool:
    """Whether ``root`` or one of its sub-folders holds an ``annotations.jsonl`` (the
    detection of the JSONL layout: one ``stat`` per sub-folder, no walk of the images)."""
    if (root / ANNOTATIONS).is_file():
        return True
    try:
        with os.scandir(root) as entries:
            return any(_is_dir(e) and (Path(e.path) / ANNOTATIONS).is_file() for e in entries)
    except OSError:
        return False


def read_jsonl(root: Path, reader: RowReader, label_key: str) -> Rows:
    """The rows of every annotations file below the split folder ``root``.

    Raises:
        DataError: there is no annotations file, or one cannot be read.
    """
    files = annotation_files(root)
    if not files:
        raise DataError(f"no {ANNOTATIONS} below {root} (data.source: jsonl).")
    for path in files:
        if not reader.inside(os.path.realpath(path)):
            reader.reject(f"{path}:0", f"annotations file leaves the data root {reader.data_root}")
            continue
        try:
            with open(path, "rb") as lines:
                for number, line in enumerate(physical_lines(lines), 1):
                    if line is None:
                        reader.reject(f"{path}:{number}", too_long())
                    elif line.strip():
                        _row(reader, path, number, line, label_key)
        except OSError as error:
            raise DataError(f"cannot read {path}: {error.strerror}") from error
    return reader.rows


def _row(reader: RowReader, path: Path, number: int, line: bytes, label_key: str) -> None:
    origin = f"{path}:{number}"
    try:
        record = json.loads(line)
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        return reader.reject(origin, f"bad JSON ({getattr(error, 'msg', error)})")
    except RecursionError:
        return reader.reject(origin, "bad JSON (nested too deeply)")
    if not isinstance(record, dict):
        return reader.reject(origin, "not a JSON object")
    if b"\\u" in line and not _encodable(record):
        return reader.reject(origin, "not UTF-8 text (a lone surrogate escape such as \\ud800)")
    missing = [k for k in ("image", label_key) if k not in record]
    if missing and (missing != [label_key] or reader.label_required):
        return reader.reject(origin, f"missing key {missing[0]!r}")
    if not isinstance(record.get("metadata", {}), dict):
        return reader.reject(origin, f"metadata {short(record['metadata'])} is not an object")
    return reader.add(
        origin, path.parent, record["image"], record.get(label_key), record.get("metadata")
    )


def unreferenced(root: Path, named: set[str]) -> tuple[int, str]:
    """How many image files below ``root`` (links not followed) no row names, and one of
    them (``""`` when none)."""
    count, example = 0, ""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in IGNORED_DIRS)
        for name in sorted(files):
            path = os.path.join(folder, name)
            if is_image_name(name) and os.path.normpath(path) not in named:
                count, example = count + 1, example or path
    return count, example


def _encodable(record: dict[str, object]) -> bool:
    """Whether ``record`` holds no lone surrogate (text no file or terminal can hold)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: What :func:`_label` gives for a label holding a control character.
CONTROL = "\x00"
#: Longest line (in bytes) of an annotations file or manifest; a longer one is a bad row.
MAX_LINE = 1 << 20


def physical_lines(binary: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``binary``, each read with at most :data:`MAX_LINE` bytes in memory;
    ``None`` stands for a longer line (skipped to its end)."""
    while line := binary.readline(MAX_LINE + 1):
        if len(line) <= MAX_LINE:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = binary.readline(MAX_LINE)
        yield None


def too_long() -> str:
    """The reason a line over :data:`MAX_LINE` is left out."""
    return f"line longer than {MAX_LINE} bytes"


@dataclass
class Rows:
    """The usable rows of one split, labels still as text, and the rejected ones.

    Attributes:
        paths: each row's image (below the data root, links resolved).
        labels: each row's class name (:func:`~classifier.splits.class_name`).
        keys: ``(size, mtime_ns, ctime_ns, device, inode)`` of each image.
        origins: ``file:line`` of each row.
        attributes: each row's attributes as JSON (``{}`` when it has none).
        rejected: ``{file:line: reason}`` of rows that cannot be used.
    """

    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    keys: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


class RowReader:
    """Collect rows whose images must lie below ``data_root``.

    Args:
        data_root: the folder no image may leave (its real path, links resolved, is compared).
        label_required: a row without a label is rejected (``False`` for ``predict``, whose
            rows may lack one: their label is then empty).
    """

    def __init__(self, data_root: Path, label_required: bool = True) -> None:
        self.data_root = data_root
        self.real_root = os.path.realpath(data_root)
        self.label_required = label_required
        self.rows = Rows()
        self._folders: dict[str, str] = {}
        self._spellings: dict[str, tuple[str, str]] = {}
        #: The image paths rows name (joined to their folder, normalised), used or not.
        self.named: set[str] = set()

    def reject(self, origin: str, reason: str) -> None:
        """Leave the row at ``origin`` out, for ``reason``."""
        self.rows.rejected[origin] = printable(reason)

    def add(self, origin: str, folder: Path, image: Any, label: Any, attributes: Any) -> None:
        """Take the row at ``origin`` (its image relative to ``folder``), or reject it."""
        if isinstance(image, str):
            self.named.add(os.path.normpath(os.path.join(folder, image)))
        name = _label(label, self.label_required)
        if name is None:
            return self.reject(origin, f"label {short(label)} is not a string or integer")
        if name == CONTROL:
            return self.reject(origin, f"label {short(label)} holds a control character")
        self._check_spelling(origin, str(label), name)
        found = self._image(folder, image)
        if isinstance(found, str):
            return self.reject(origin, found)
        try:
            text = json.dumps({} if attributes is None else attributes)
        except (ValueError, TypeError, RecursionError):
            return self.reject(origin, "attributes nested too deeply")
        path, info = found
        self.rows.paths.append(path)
        self.rows.labels.append(name)
        self.rows.keys.append(
            (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_dev, info.st_ino)
        )
        self.rows.origins.append(origin)
        self.rows.attributes.append(text)
        return None

    def _check_spelling(self, origin: str, text: str, name: str) -> None:
        """Refuse two labels that differ only by case or Unicode form (as two class folders
        are refused); ``23`` and ``"23"`` are one label.

        Raises:
            DataError: naming both labels and a row of each.
        """
        if not name:
            return
        first = self._spellings.setdefault(name.casefold(), (text, origin))
        if first[0] != text:
            raise DataError(
                f"labels {first[0]!r} ({first[1]}) and {text!r} ({origin}) differ only by case "
                "or Unicode form; make them one label or rename one of them."
            )

    def inside(self, real_path: str) -> bool:
        """Whether ``real_path`` (links resolved) lies below the data root."""
        return os.path.commonpath([real_path, self.real_root]) == self.real_root

    def _resolved(self, joined: str) -> str:
        """``os.path.realpath(joined)``, with each folder resolved once (a million rows in a
        few folders: one ``lstat`` a row instead of one per path component)."""
        head, name = os.path.split(joined)
        if name in ("", ".", ".."):
            return os.path.realpath(joined)
        real = self._folders.get(head)
        if real is None:
            real = self._folders[head] = os.path.realpath(head)
        target = os.path.join(real, name)
        try:
            if stat.S_ISLNK(os.lstat(target).st_mode):  # a link: where it points
                return os.path.realpath(target)
        except OSError:
            pass  # missing: reported by the stat that follows
        return target

    def _image(self, folder: Path, image: Any) -> tuple[str, os.stat_result] | str:
        """The row's image as a path below the data root and its ``stat``, or why not."""
        if not isinstance(image, str) or not image or "\0" in image:
            return f"image {short(image)} is not a file path"
        target = self._resolved(os.path.join(folder, image))
        if not self.inside(target):
            return f"image {image} leaves the data root {self.data_root} (resolved: {target})"
        try:
            info = os.stat(target)
        except OSError as error:
            return f"missing file {image} ({error.strerror})"
        if not stat.S_ISREG(info.st_mode):
            return f"image {image} is not a regular file"
        return os.path.join(self.data_root, os.path.relpath(target, self.real_root)), info


def _label(value: Any, required: bool) -> str | None:
    """The class name of a label value (text or an integer), ``""`` for a missing one that
    is not ``required``, :data:`CONTROL` for one holding a control character or a lone
    surrogate (escaping it could make it another label's name), else ``None``."""
    if value in (None, "") and not required:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    text = str(value)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return CONTROL
    return class_name(text)


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def classes_of(rows: Rows) -> list[str]:
    """The sorted class names of ``rows`` (train's rows make the class map)."""
    return sorted(set(rows.labels))


def to_split(name: str, root: Path, rows: Rows, class_names: list[str]) -> Split:
    """``rows`` as a :class:`~classifier.splits.Split` labelled in ``class_names``; a row whose
    label train lacks is rejected (``predict`` keeps it, label -1).

    Raises:
        DataError: no usable row is left (naming a few rejected ones).
    """
    index = {c: i for i, c in enumerate(class_names)}
    rejected = dict(rows.rejected)
    keep, labels = [], []
    for i, label in enumerate(rows.labels):
        if label in index or name == "predict":
            keep.append(i)
            labels.append(index.get(label, -1))
        else:
            rejected[rows.origins[i]] = f"label {label!r} is not a class of train"
    if not keep:
        listing = "; ".join(f"{o}: {r}" for o, r in list(rejected.items())[:3])
        raise DataError(f"no usable annotation rows for {name} in {root}. {listing}".strip())
    keys = np.asarray([rows.keys[i] for i in keep], dtype=np.int64).reshape(-1, KEY_COLUMNS)
    present = set(labels)
    return Split(
        name,
        root,
        Paths.of(rows.paths[i] for i in keep),
        np.asarray(labels, dtype=np.int64),
        keys,
        missing_classes=[c for i, c in enumerate(class_names) if i not in present],
        origins=Texts.of(rows.origins[i] for i in keep),
        attributes=Texts.of(rows.attributes[i] for i in keep),
        rejected=rejected,
    )
