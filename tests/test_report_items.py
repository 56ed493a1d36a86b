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
