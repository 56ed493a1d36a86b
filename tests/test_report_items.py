"""The one route from a callback to report.html (classifier.report_items)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from PIL import Image

from classifier import report_items
from classifier.figures import log_image, save_png
from classifier.html_report import write_report


def _png(path: Path) -> Path:
    return save_png(Image.fromarray(np.full((8, 120, 3), 200, dtype=np.uint8)), path)


class GradientNorms(pl.Callback):
    """A new metric and figure on the report, in one place: this callback alone."""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        folder = Path(trainer.log_dir)
        report_items.cards(folder, "curves", "grad-norm", {"grad_norm": 1.5}, "Gradient norm")
        path = _png(folder / "grad_norm.png")  # drawn on the figure thread in real code
        log_image(trainer, "grad_norm", path, 0, section="curves", alt="gradient norm")


def test_a_new_metric_and_figure_reach_the_report_from_one_callback(tmp_path: Path) -> None:
    trainer = SimpleNamespace(log_dir=str(tmp_path), loggers=[])
    GradientNorms().on_validation_end(trainer, None)
    page = write_report(tmp_path).read_text()
    assert '<section id="curves"><h2>Learning curves</h2>' in page
    assert "<h3>Gradient norm</h3>" in page and "grad_norm<b>1.5</b>" in page
    assert 'alt="gradient norm" src="data:image/png;base64,' in page


def test_an_item_replaces_the_one_of_its_key_and_test_results_replace_the_runs(
    tmp_path: Path,
) -> None:
    run, results = tmp_path / "run", tmp_path / "run" / "test"
    results.mkdir(parents=True)
    for top1 in (0.5, 0.7):  # a later epoch, or a resumed run, updates the item in place
        report_items.cards(run, "summary", "summary/test", {"top1": top1}, "Test")
    report_items.table(run, "per-class", "per-class/val", ["class", "f1"], [["cat", 1.0]], "val")
    report_items.table(run, "per-class", "per-class/test", ["class", "f1"], [["cat", 0.1]], "test")
    report_items.table(results, "per-class", "per-class/test", ["class"], [["dog"]], "test")
    assert len(report_items.read_items(run)) == 3
    page = write_report(run).read_text()
    assert "<b>0.7</b>" in page and "<b>0.5</b>" not in page and "<h3>Test</h3>" in page
    page = write_report(run, results).read_text()
    assert page.index("<h3>val</h3>") < page.index("<h3>test (test/)</h3>")
    assert "dog" in page and "0.1" not in page.split('id="per-class"')[1]


@pytest.mark.parametrize(
    "planted",
    [
        {"file": "../id_rsa.png"},
        {"file": "/etc/secret.png"},
        {"file": "sub/x.png"},
        {"file": ".hidden.png"},
        {"file": "notes.txt"},
        {"section": 'x"><script>'},
        {"kind": "html"},
        {"alt": ["<b>"]},
    ],
)
def test_a_planted_manifest_reads_nothing_outside_the_folder(
    tmp_path: Path, planted: dict[str, Any]
) -> None:
    """A run folder may come from someone else: its manifest names plain PNG files in its own
    folder, in known sections, or the report is not written."""
    secret = tmp_path / "id_rsa.png"
    _png(secret)
    run = tmp_path / "run"
    run.mkdir()
    item = {"section": "curves", "key": "k", "kind": "figure", "file": "x.png", "alt": ""}
    (run / report_items.MANIFEST).write_text(json.dumps(item | planted) + "\n")
    with pytest.raises(ValueError):
        write_report(run)
    assert not (run / "report.html").exists()


def test_every_text_a_manifest_holds_is_escaped(tmp_path: Path) -> None:
    script = "<script>alert(1)</script>"
    _png(tmp_path / "a.png")
    report_items.figure(tmp_path / "a.png", "gallery", script)
    report_items.note(tmp_path, "summary", script, script, heading=script)
    report_items.cards(tmp_path, "summary", "c", {script: 1.0}, script)
    report_items.table(tmp_path, "model", "t", [script], [[script]], script)
    page = write_report(tmp_path).read_text()
    assert "<script" not in page and page.count("&lt;script&gt;") == 8


def test_an_empty_table_is_left_off_the_page(tmp_path: Path) -> None:
    """A section with nothing to list (no copies found) shows no bare header row."""
    report_items.table(tmp_path, "data", "data/groups", ["kind", "path"], [], "Copies")
    report_items.table(tmp_path, "data", "data/duplicates", ["duplicates"], [["leakage"]])
    page = write_report(tmp_path).read_text()
    assert "leakage" in page and "<h3>Copies</h3>" not in page and "<th>kind</th>" not in page


def test_a_planted_manifest_cannot_grow_the_page_past_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One big PNG named under many keys is embedded once; figures past the page's budget are
    left out with a warning, so a run folder from someone else cannot make the page (and the
    memory that builds it) grow without bound."""
    from classifier import html_report

    monkeypatch.setattr(html_report, "MAX_EMBEDDED_BYTES", 300_000)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200_000))
    other = tmp_path / "other.png"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200_000))
    lines = [
        {"section": "curves", "key": f"b{i}", "kind": "figure", "file": "big.png", "alt": "x"}
        for i in range(50)
    ] + [{"section": "curves", "key": "o", "kind": "figure", "file": "other.png", "alt": "y"}]
    (tmp_path / report_items.MANIFEST).write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.warns(UserWarning, match=r"other\.png not shown \(the page already embeds"):
        page = write_report(tmp_path).read_text()
    assert page.count("<img") == 1 and len(page) < 400_000


@pytest.mark.parametrize("line", ['{"x": NaN}', "[" * 200_000])
def test_a_manifest_with_nan_or_deep_nesting_is_replaced_when_written_to(
    tmp_path: Path, line: str
) -> None:
    """A damaged manifest stops the report (a warning in the command), never the run that adds
    the next item: a resumed fit used to stop with a traceback."""
    (tmp_path / report_items.MANIFEST).write_text(line + "\n")
    with pytest.raises(ValueError):
        report_items.read_items(tmp_path)
    report_items.cards(tmp_path, "summary", "summary/val", {"top1": 0.5}, "Validation")
    assert [i["key"] for i in report_items.read_items(tmp_path)] == ["summary/val"]


def test_a_later_test_replaces_every_test_item_of_the_run(tmp_path: Path) -> None:
    """`classifier test` into its own folder: the run's test items (the fit's own test) are
    left out, even those the later test did not write again, and planted ones with them."""
    run, results = tmp_path / "run", tmp_path / "run" / "test_2"
    results.mkdir(parents=True)
    report_items.table(run, "confusion", "confused/test", ["true"], [["fit-time pair"]], "Test")
    report_items.figure(_png(run / "confusion_matrix_test.png"), "confusion", "old test")
    report_items.figure(_png(run / "confusion_matrix_val.png"), "confusion", "val")
    report_items.cards(results, "summary", "summary/test", {"top1": 0.33}, "Test")
    page = write_report(run, results).read_text()
    assert "fit-time pair" not in page and 'alt="old test"' not in page
    assert 'alt="val"' in page and "<b>0.33</b>" in page
    assert write_report(run).read_text().count("fit-time pair") == 1  # the run alone: kept


def test_text_that_looks_like_a_number_is_shown_as_written(tmp_path: Path) -> None:
    report_items.table(tmp_path, "per-class", "pc", ["class", "f1"], [["1.0", 0.123456], ["1", 1]])
    page = write_report(tmp_path).read_text()
    assert "<td>1.0</td><td>0.1235</td>" in page and "<td>1</td><td>1</td>" in page


def test_a_linked_manifest_or_figure_is_named_in_a_warning(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    report_items.cards(outside, "summary", "s", {"top1": 0.9}, "Planted")
    run = tmp_path / "run"
    run.mkdir()
    (run / report_items.MANIFEST).symlink_to(outside / report_items.MANIFEST)
    with pytest.warns(UserWarning, match=r"report_items\.jsonl not shown \(a link"):
        page = write_report(run).read_text()
    assert "Planted" not in page
