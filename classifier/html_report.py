"""``report.html``: one self-contained page that shows a run.

Built from what the callbacks handed it through :mod:`~classifier.report_items` (the run
folder's ``report_items.jsonl``, then a ``classifier test`` results folder's): headline
metrics, learning curves, confusion matrix and most-confused pairs, per-class table (worst F1
first), top-loss gallery, calibration (when present), data health, model info and the export's
contract and verification. It reads no other file by name. Images are embedded; no JavaScript,
no network; the layout reflows on a phone.
"""

from __future__ import annotations

import base64
import html
import os
import warnings
from pathlib import Path
from typing import Any

from classifier.errors import printable
from classifier.file_io import atomic_write_text, read_regular
from classifier.report_items import KINDS, MANIFEST, SECTIONS, is_test_item, read_items

#: Most bytes of PNG one page embeds, all figures together (a normal run's are a few MB); a
#: run folder from someone else cannot make the page, or the memory building it, grow past it.
MAX_EMBEDDED_BYTES = 64 * 2**20

__all__ = ["SECTIONS", "write_report"]

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f4f6f9}
main{max-width:1100px;margin:0 auto;padding:12px}
section{background:#fff;border-radius:8px;padding:12px 16px;margin:12px 0;
box-shadow:0 1px 3px #0002}
h1{font-size:1.4em;margin:8px 0}h2{font-size:1.15em;margin:4px 0 10px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#eef2f8;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:1.3em}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:8px}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.92em}
td,th{border-bottom:1px solid #dde;padding:3px 8px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}.muted{color:#667}.bad{color:#b3261e}
"""


class _Embedder:
    """Embeds each PNG once, up to :data:`MAX_EMBEDDED_BYTES` in all."""

    def __init__(self) -> None:
        self.done: set[Path] = set()
        self.total = 0

    def image(self, path: Path, alt: str) -> str:
        """The PNG at ``path`` embedded; nothing (and a one-line warning) when it is missing,
        not a regular file (a link planted in the run folder is never followed), not a PNG,
        already shown, or past the page's budget."""
        if path in self.done:
            return ""
        self.done.add(path)
        data = read_regular(path)
        if data is None or not data.startswith(b"\x89PNG\r\n\x1a\n"):
            _skipped(path, "missing, a link or not a PNG file")
            return ""
        if self.total + len(data) > MAX_EMBEDDED_BYTES:
            _skipped(path, f"the page already embeds {self.total / 2**20:.0f} MB of figures")
            return ""
        self.total += len(data)
        encoded = base64.b64encode(data).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _skipped(path: Path, why: str) -> None:
    warnings.warn(f"report.html: {printable(str(path))} not shown ({why})", stacklevel=3)


def _fmt(value: Any) -> str:
    """Floats to four significant digits; text as it is (a class named ``1.0`` stays so)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(item: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in item["header"])
    marked = set(item.get("marked", []))
    body = "".join(
        f"<tr{' class=bad' if i in marked else ''}>"
        + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        + "</tr>"
        for i, row in enumerate(item["rows"])
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _cards(values: dict[str, Any]) -> str:
    cards = "".join(
        f'<div class="card">{html.escape(k)}<b>{html.escape(_fmt(v))}</b></div>'
        for k, v in values.items()
    )
    return f'<div class="cards">{cards}</div>'


def _items(run: Path, results: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The run's items, then the results folder's: one with the key of a run item replaces
    it in place. With a results folder of its own, the run's test items are left out
    (:func:`~classifier.report_items.is_test_item`): the page never shows an earlier test
    beside this one."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in (run,) if results == run else (run, results):
        items = read_items(folder)
        manifest = folder / MANIFEST
        if not items and os.path.lexists(manifest) and read_regular(manifest) is None:
            _skipped(manifest, "a link or not a regular file, or too large")
        for item in items:
            if folder == run != results and is_test_item(item["key"]):
                continue
            found[item["key"]] = (folder, item)
    return list(found.values())


def _section(
    items: list[tuple[Path, dict[str, Any]]], results: Path, run: Path, embed: _Embedder
) -> str:
    parts = []
    for kind in KINDS:
        shown = [(folder, item) for folder, item in items if item["kind"] == kind]
        if kind == "figure":
            images = "".join(embed.image(folder / i["file"], i["alt"]) for folder, i in shown)
            parts.append(f'<div class="pair">{images}</div>' if images else "")
            continue
        for folder, item in shown:
            if kind == "table" and not item["rows"]:
                continue  # an empty table says nothing (no copies found, say)
            heading = item.get("heading", "")
            if heading and folder != run:
                heading += f" ({results.name}/)"
            parts.append(f"<h3>{html.escape(heading)}</h3>" if heading else "")
            if kind == "note":
                parts.append(f"<p>{html.escape(item['text'])}</p>")
            elif kind == "cards":
                parts.append(_cards(item["values"]))
            else:
                parts.append(_table(item))
    return "".join(parts)


def write_report(run: Path | str, results: Path | str | None = None) -> Path:
    """Write ``run/report.html`` from the items the run's callbacks handed it; test results
    come from ``results`` (a ``classifier test`` folder such as ``run/test/``), else from the
    run itself."""
    run = Path(run)
    results = Path(results) if results is not None else run
    items, embed = _items(run, results), _Embedder()
    sections = []
    for key, title in SECTIONS:
        body = _section([i for i in items if i[1]["section"] == key], results, run, embed)
        if key == "summary":
            body += f'<p class="muted">run folder {html.escape(str(run))}</p>'
        if body:
            sections.append(f'<section id="{key}"><h2>{title}</h2>{body}</section>')
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(run.name)}: classifier report</title><style>{_STYLE}</style>"
        f"</head><body><main><h1>Run {html.escape(str(run))}</h1>{''.join(sections)}"
        "</main></body></html>"
    )
    path = run / "report.html"
    atomic_write_text(path, page)
    return path
