"""Splits given as ``annotations.jsonl`` files, the layout of ``ortizeg/classifier-training``.

Every ``annotations.jsonl`` below a split's folder counts, at any depth; each non-blank line is
one row ``{"image": "crops/0001.jpg", "suffix": "23", "metadata": {...}}``: the image relative
to the annotations file, the label under a configurable key (``suffix``), and optional
attributes under ``metadata``. One image may appear in several rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from classifier.manifest import RowReader, Rows, physical_lines, short, too_long
from classifier.pil_decode import is_image_name
from classifier.splits import IGNORED_DIRS, MAX_FOLDERS, DataError

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
