"""The one route from a callback to ``report.html``: a callback hands the report what it shows.

A callback that wants something on the page calls :func:`note`, :func:`cards`, :func:`table`
or :func:`figure` (or passes ``section=`` to :func:`~classifier.figures.log_image`, which
registers the figure it just wrote) with the folder it writes its files to (the run folder, or
a ``classifier test`` results folder), the report section it belongs to and a key. Each call
records one item in that folder's ``report_items.jsonl`` (one JSON object a line, the file
rewritten atomically). An item replaces the one of the same key, so a resumed run, a later
epoch or a repeated stage updates it in place instead of repeating it.

:mod:`~classifier.html_report` renders what the run folder's manifest holds, then the results
folder's (an item with the same key as one of the run's replaces it there), section by section
in the order of :data:`SECTIONS`; within a section notes, cards, figures (side by side), then
tables, each kind in the order the items were first recorded. It knows no other file names.

A run folder may come from someone else, so :func:`read_items` checks every item: a figure
names a plain ``.png`` file in the manifest's own folder (no path, never a link: it is read
with :func:`~classifier.file_io.read_regular`), every value is a string or a number (the report
escapes them all), and a malformed manifest raises :class:`ValueError` (the command that
writes the report warns and keeps its results).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from classifier.file_io import atomic_write_text, read_regular

MANIFEST = "report_items.jsonl"

#: ``(id, title)`` of every section of the report, in page order.
SECTIONS = (
    ("summary", "Summary"),
    ("curves", "Learning curves"),
    ("confusion", "Confusion matrix"),
    ("per-class", "Per class"),
    ("slices", "Slices"),
    ("gallery", "Validation images with the highest loss"),
    ("calibration", "Calibration"),
    ("accept", "Accept or reject"),
    ("labels", "Label issues"),
    ("data", "Data health"),
    ("model", "Model"),
    ("export", "Export"),
)
#: The kinds of item, in the order they are shown within a section.
KINDS = ("note", "cards", "figure", "table")

_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.png")
_LOCK = threading.Lock()  # items come from the training thread and the figure thread

Cell = str | int | float


def note(folder: Path, section: str, key: str, text: str, heading: str = "") -> None:
    """A paragraph of text."""
    _add(folder, {"section": section, "key": key, "kind": "note", "text": text}, heading)


def cards(folder: Path, section: str, key: str, values: Mapping[str, float], heading: str) -> None:
    """Headline numbers, one card each."""
    shown = {str(k): _cell(v) for k, v in values.items()}
    _add(folder, {"section": section, "key": key, "kind": "cards", "values": shown}, heading)


def table(
    folder: Path,
    section: str,
    key: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    heading: str = "",
    marked: Iterable[int] = (),
) -> None:
    """A table; the rows numbered in ``marked`` are shown as warnings."""
    item = {
        "section": section,
        "key": key,
        "kind": "table",
        "header": [str(h) for h in header],
        "rows": [[_cell(v) for v in row] for row in rows],
        "marked": sorted(set(marked)),
    }
    _add(folder, item, heading)


def figure(path: Path, section: str, alt: str, key: str = "") -> None:
    """The PNG at ``path``, written by the caller, in its own folder; its key is its file name
    unless ``key`` says otherwise."""
    item = {"section": section, "key": key or path.name, "kind": "figure"}
    item |= {"file": path.name, "alt": alt}
    _add(path.parent, item, "")


def _cell(value: Any) -> Cell:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _add(folder: Path, item: dict[str, Any], heading: str) -> None:
    if heading:
        item["heading"] = heading
    _check(item)
    with _LOCK:
        try:
            items = read_items(folder)
        except ValueError:  # a damaged manifest is replaced, never fatal to the run
            items = []
        keys = [i["key"] for i in items]
        if item["key"] in keys:
            items[keys.index(item["key"])] = item
        else:
            items.append(item)
        text = "".join(json.dumps(i, allow_nan=False) + "\n" for i in items)
        atomic_write_text(folder / MANIFEST, text)


def read_items(folder: Path) -> list[dict[str, Any]]:
    """The items recorded in ``folder`` (none when it has no manifest, or a link or something
    else than a regular file is in its place); :class:`ValueError` when one is malformed
    (NaN or infinity included: the manifest never holds them, :func:`_cell`)."""
    data = read_regular(folder / MANIFEST)
    if data is None:
        return []
    items = []
    try:
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                item = json.loads(line, parse_constant=_no_constant)
                _check(item)
                items.append(item)
    except RecursionError:  # a line of nested brackets
        raise ValueError(f"{MANIFEST} nests too deeply") from None
    return items


def _no_constant(name: str) -> Any:
    raise ValueError(f"{MANIFEST} holds {name}")


def is_test_item(key: str) -> bool:
    """Whether the item of ``key`` belongs to the test stage: one of its parts (split at ``/``,
    ``_`` and ``.``) is ``test``, as in ``per-class/test`` or ``confusion_matrix_test.png``.
    Callbacks name their test items so; :func:`~classifier.html_report.write_report` shows
    them from a ``classifier test`` results folder only."""
    return "test" in re.split(r"[/_.]", key)


def _check(item: Any) -> None:
    """Raise :class:`ValueError` unless ``item`` is one the report can show safely."""
    if not isinstance(item, dict):
        raise ValueError("a report item is not an object")
    if item.get("section") not in dict(SECTIONS) or item.get("kind") not in KINDS:
        raise ValueError(f"unknown report section or kind: {item.get('section')!r}")
    if not isinstance(item.get("key"), str) or not isinstance(item.get("heading", ""), str):
        raise ValueError("a report item's key or heading is not text")
    kind = item["kind"]
    if kind == "note" and not isinstance(item.get("text"), str):
        raise ValueError("a report note is not text")
    if kind == "cards":
        values = item.get("values")
        if not isinstance(values, dict) or not all(_is_cell(v) for v in values.values()):
            raise ValueError("report cards are not numbers")
    if kind == "figure" and (
        not isinstance(item.get("file"), str)
        or not _FILE.fullmatch(item["file"])
        or not isinstance(item.get("alt"), str)
    ):
        raise ValueError("a report figure is not a PNG file name in its own folder")
    if kind == "table":
        header, rows, marked = item.get("header"), item.get("rows"), item.get("marked", [])
        if not (
            isinstance(header, list)
            and all(isinstance(h, str) for h in header)
            and isinstance(rows, list)
            and all(isinstance(r, list) and all(_is_cell(v) for v in r) for r in rows)
            and isinstance(marked, list)
            and all(isinstance(m, int) for m in marked)
        ):
            raise ValueError("a report table is not rows of text and numbers")


def _is_cell(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)
