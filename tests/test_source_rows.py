"""Rows of annotation files and manifests that cannot be used are named by file and line and
left out, one at a time; labels that differ are never merged into one class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_folder
from tests.test_sources import setup, write_jsonl, write_rows


def manifest_lines(data: Path) -> list[bytes]:
    """``path,label,split`` lines of every image of ``data`` (train and val)."""
    lines = [b"path,label,split"]
    for split in ("train", "val"):
        for image in sorted((data / split).rglob("*.png")):
            path = image.relative_to(data).as_posix()
            lines.append(f"{path},{image.parent.name},{split}".encode())
    return lines


def test_unreadable_csv_rows_are_named_by_line_and_listed_once(tmp_path: Path) -> None:
    from classifier.splits import DataError

    data = make_folder(tmp_path / "d", counts={"train": 4, "val": 2})
    lines = manifest_lines(data)  # 12 train rows (lines 2-13), 6 val rows (lines 14-19)
    bad = [
        b"train/cat/cat_000.png,c\xffat,train",  # line 20: not UTF-8
        b"train/cat/cat_001.png,cat," + b"x" * 200_000,  # 21: a field over csv's limit
        b"train/cat/cat_002.png,cat,train," + b"y" * (2 << 20),  # 22: a line over 1 MiB
        b"train/cat/cat_003.png,cat,train,extra",  # 23: too many values
        b'train/dog/dog_000.png,"dog,train',  # 24: an unterminated quote ...
        b"train/fox/fox_000.png,fox,train",
        b"train/fox/fox_001.png,fox,val",  # 26: ... swallows these two
    ]
    (data / "manifest.csv").write_bytes(b"\n".join(lines + bad) + b"\n")
    with pytest.warns(UserWarning, match=r"excluded 5 unusable image\(s\) or row\(s\)"):
        dm = setup(data, source="csv")
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 6
    manifest = data / "manifest.csv"
    assert dm.excluded == {
        "train": {
            f"{manifest}:20": "not UTF-8 text",
            f"{manifest}:21": "bad CSV (field larger than field limit (131072))",
            f"{manifest}:22": "line longer than 1048576 bytes",
            f"{manifest}:23": "4 values for 3 columns",
            f"{manifest}:24": "a quoted field runs over lines 24-26: an unterminated quote?",
        }
    }
    with pytest.raises(DataError, match=r"manifest.csv:24: a quoted field runs over lines 24-26"):
        setup(data, source="csv", strict=True)


def test_jsonl_rows_with_odd_metadata_or_over_long_lines_are_bad_rows(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data")
    valid = data / "valid" / "annotations.jsonl"
    first = len(valid.read_text().splitlines()) + 1
    rows: list[Any] = [
        {"image": "crops/7_0.png", "suffix": "7", "metadata": "white"},
        {"image": "crops/7_1.png", "suffix": "7", "metadata": None},
        {"image": "crops/7_2.png", "suffix": "7", "metadata": [1, 2]},
        {"image": "crops/7_3.png", "suffix": "7", "metadata": {"note": "x" * (2 << 20)}},
    ]
    with open(valid, "a") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.warns(UserWarning, match="excluded 4"):
        dm = setup(data)
    assert dm.excluded["val"] == {
        f"{valid}:{first}": "metadata 'white' is not an object",
        f"{valid}:{first + 1}": "metadata None is not an object",
        f"{valid}:{first + 2}": "metadata [1, 2] is not an object",
        f"{valid}:{first + 3}": "line longer than 1048576 bytes",
    }
    assert len(dm.splits["val"]) == 12


def append_rows(path: Path, rows: list[dict[str, Any]]) -> int:
    """Append ``rows`` to the annotations file ``path``; the line number of the first."""
    first = len(path.read_text().splitlines()) + 1
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return first


def test_labels_are_never_merged_by_escaping_and_an_integer_is_its_text(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data")
    train = data / "train" / "annotations.jsonl"
    first = append_rows(
        train,
        [
            {"image": "crops/7_0.png", "suffix": "x\ny"},  # a real newline: a bad row
            {"image": "crops/7_1.png", "suffix": "x\\ny"},  # the text x\ny: a class
            {"image": "crops/7_2.png", "suffix": "\ud800"},  # a lone surrogate: a bad row
            {"image": "crops/\udcff.png", "suffix": "7"},  # in a path: a bad row
            {"image": "crops/7_3.png", "suffix": "7", "metadata": {"a": "\udcff"}},
            {"image": "crops/23_0.png", "suffix": 23},  # the integer 23 is the label "23"
        ],
    )
    with pytest.warns(UserWarning, match="excluded 4"):
        dm = setup(data)
    assert dm.class_names == ["23", "7", "9", "x\\ny"]
    surrogate = "not UTF-8 text (a lone surrogate escape such as \\ud800)"
    assert dm.excluded["train"] == {
        f"{train}:{first}": "label 'x\\ny' holds a control character",
        f"{train}:{first + 2}": surrogate,
        f"{train}:{first + 3}": surrogate,
        f"{train}:{first + 4}": surrogate,
    }
    assert len(dm.splits["train"]) == 3 * 8 + 2


@pytest.mark.parametrize(
    "spellings", [("Cat", "cat"), ("caf\u00e9", "cafe\u0301")], ids=["case", "unicode-form"]
)
def test_labels_differing_only_by_case_or_unicode_form_are_refused(
    tmp_path: Path, spellings: tuple[str, str]
) -> None:
    from classifier.splits import DataError

    data = write_jsonl(tmp_path / "data")
    train = data / "train" / "annotations.jsonl"
    rows = [{"image": f"crops/7_{i}.png", "suffix": s} for i, s in enumerate(spellings)]
    first = append_rows(train, rows)
    with pytest.raises(DataError) as raised:
        setup(data)
    a, b = (repr(s) for s in spellings)
    message = str(raised.value)
    assert f"labels {a} ({train}:{first}) and {b} ({train}:{first + 1}) differ only" in message
    assert "\n" not in message  # one error: line


def one_class_data(root: Path, source: str) -> Path:
    """Data of the class ``cat`` only, as ``source``."""
    if source == "jsonl":
        data = write_jsonl(root)
        for split in ("train", "valid", "test"):
            path = data / split / "annotations.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            path.write_text("".join(json.dumps({**r, "suffix": "cat"}) + "\n" for r in rows))
        return data
    data = make_folder(root, classes=("cat",), counts={"train": 6})
    if source == "csv":
        rows = [f"{p.relative_to(data).as_posix()},cat" for p in sorted(data.rglob("*.png"))]
        (data / "train.csv").write_text("\n".join(["path,label", *rows]) + "\n")
    return data


@pytest.mark.parametrize("source", ["folders", "jsonl", "csv"])
def test_a_single_class_is_one_error_before_any_work(tmp_path: Path, source: str) -> None:
    from classifier.splits import DataError

    data = one_class_data(tmp_path / "d", source)
    with pytest.raises(DataError, match=r"^train has one class, 'cat' \(.*\); a classifier needs"):
        setup(data, source=source, val_fraction=0.5 if source != "jsonl" else 0.0)


def test_a_stray_annotations_file_does_not_silently_replace_a_folder_dataset(
    tmp_path: Path,
) -> None:
    from classifier.splits import DataError

    data = make_folder(tmp_path / "d", counts={"train": 4, "val": 2})  # 12 + 6 images
    for split, names in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        rows = [{"image": f"../{c}/{c}_00{i}.png", "suffix": c} for c in names for i in (0, 1)]
        write_rows(data / split / "cat" / "annotations.jsonl", rows)
    with pytest.raises(DataError, match=r"and 8 image\(s\) that no row names \(e\.g\. .*\.png\)"):
        setup(data)  # auto
    with pytest.warns(UserWarning) as caught:
        dm = setup(data, source="jsonl")
    assert len(dm.splits["train"]) == 4 and len(dm.splits["val"]) == 4
    messages = [str(w.message) for w in caught]
    assert f"{data / 'train'}: 8 image(s) that no annotations.jsonl row names are not used" in (
        messages
    )
    assert f"{data / 'val'}: 2 image(s) that no annotations.jsonl row names are not used" in (
        messages
    )
