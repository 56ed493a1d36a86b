"""Metrics per attribute value: a weak slice is found, named and shown worst first."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifier.slices import Predictions, flatten, table, warning, write
from tests.conftest import CONF, draw, run_cli, tiny


def test_flatten_keeps_scalars_and_nests_with_dots() -> None:
    found = flatten({"color": "white", "border": True, "n": 3, "box": {"side": "left"}, "l": [1]})
    assert found == {"color": "white", "border": "true", "n": "3", "box.side": "left"}


def test_a_slice_far_below_the_split_is_warned_about_a_small_one_only_shown() -> None:
    # 100 images: 40 "night" at 50% right, 50 "day" all right, 10 "dusk" all wrong.
    labels = np.arange(100) % 2
    predicted = labels.copy()
    times = ["night"] * 40 + ["day"] * 50 + ["dusk"] * 10
    predicted[:40:2] = 1 - labels[:40:2]
    predicted[90:] = 1 - labels[90:]
    attributes = [json.dumps({"time": t}) for t in times]
    found = Predictions(labels, predicted, np.full(100, 0.9))
    rows, overall, _ = table(found, attributes, calibrated=False)
    assert overall == pytest.approx(0.7)
    assert [r[1] for r in rows] == ["dusk", "night", "day"]  # worst first
    dusk, night, day = rows
    assert dusk[2:] == [10, 0.0, 0.0, "", "false"]  # 10 images: shown, never warned about
    assert night[2:4] == [40, 0.5] and night[-1] == "true"
    assert day[-1] == "false"
    message = warning("val", rows, overall, 0.1)
    assert message is not None and "time=night: 0.500 on 40 images" in message
    assert "dusk" not in message
    calibrated, *_ = table(found, attributes, calibrated=True)
    assert calibrated[2][5] == pytest.approx(0.1)  # day: 0.9 confident, all right


def test_unreadable_images_are_left_out_and_balanced_accuracy_is_per_class() -> None:
    labels = np.array([0, 0, 0, 1, -2])
    predicted = np.array([0, 0, 0, 0, 0])
    attributes = [json.dumps({"a": "x"})] * 5
    rows, overall, _ = table(Predictions(labels, predicted, np.ones(5)), attributes, False)
    assert rows[0][2:5] == [4, 0.75, 0.5] and overall == 0.75


def test_only_attributes_of_few_values_and_the_first_hundred_are_sliced() -> None:
    from classifier.slices import MAX_ATTRIBUTES, left_out_note

    # 150 rows, each with 300 keys of one value and an ID of 150 values.
    keys = {f"k{i:03d}": "v" for i in range(300)}
    attributes = [json.dumps({**keys, "id": str(n)}) for n in range(150)]
    found = Predictions(np.zeros(150, int), np.zeros(150, int), np.ones(150))
    rows, _, left_out = table(found, attributes, calibrated=False)
    assert len(rows) == MAX_ATTRIBUTES == 100
    assert {r[0] for r in rows} == {f"k{i:03d}" for i in range(100)}
    assert len(left_out) == 201 and "id" in left_out
    note = left_out_note("val", left_out)
    assert note is not None and note.startswith("val: 201 attribute(s) not sliced")
    assert note.count("\n") == 0 and note.endswith("and 196 more")


def test_the_report_section_lists_the_file_and_marks_warnings(tmp_path: Path) -> None:
    write(tmp_path / "slices_val.csv", [["time", "<night>", 40, 0.5, 0.5, "", "true"]])
    from classifier.html_report import write_report

    body = write_report(tmp_path).read_text().split('id="slices"')[1]
    assert "&lt;night&gt;" in body and "class=bad" in body
    (tmp_path / "none").mkdir()
    assert 'id="slices"' not in write_report(tmp_path / "none").read_text()


@pytest.mark.slow
def test_a_weak_attribute_slice_is_reported_after_fit_and_test(tmp_path: Path) -> None:
    """Rows with ``border: broken`` show another class's picture: the model cannot get them
    right, so that slice falls far below the split and is named."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, n in (("train", 30), ("valid", 30), ("test", 30)):
        (data / split / "crops").mkdir(parents=True)
        rows = []
        for label in range(3):
            for i in range(n):
                broken = i % 3 == 0 and split != "train"
                name = f"crops/{label}_{i}.png"
                draw((label + 1) % 3 if broken else label, rng).save(data / split / name)
                meta = {"border": "broken" if broken else "clean", "team": f"t{i % 2}"}
                rows.append({"image": name, "suffix": str(label), "metadata": meta})
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (data / split / "annotations.jsonl").write_text(text)
    with pytest.warns(UserWarning, match=r"val: .*border=broken"):
        cli: Any = run_cli(
            *tiny("fit", data, "--trainer.max_epochs", "4", "--test_after_fit", "true"),
            "--config",
            str(CONF / "callbacks.yaml"),
        )
    run = Path(cli.trainer.log_dir)
    for split in ("val", "test"):
        with (run / f"slices_{split}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert (rows[0]["attribute"], rows[0]["value"]) == ("border", "broken")
        assert rows[0]["warning"] == "true" and int(rows[0]["images"]) == 30
        assert {r["value"] for r in rows} == {"broken", "clean", "t0", "t1"}
    assert all(r["ece"] for r in rows)  # test ran after Calibration
    assert 'id="slices"' in (run / "report.html").read_text()
