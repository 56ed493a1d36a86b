"""Regression tests for the second round of hostile attacks (issue #19), rows 15-17: malformed
checkpoints, weights and ONNX metadata are one error line; names never become formulas or
terminal escapes. Each failed on the code before its fix."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import make_folder, tiny
from tests.test_attacks import assert_one_error_line, run_entry
from tests.test_trust import EXE, _env


def bad_checkpoint(folder: Path, change: dict[str, Any]) -> Path:
    """``folder/bad.ckpt``: a minimal checkpoint of two classes with ``change`` applied."""
    checkpoint = {
        "state_dict": {"w": torch.zeros(1)},
        "hyper_parameters": {"model_name": "test_resnet", "class_names": ["a", "b"]},
        "datamodule_hyper_parameters": {},
        "class_names": ["a", "b"],
    }
    path = folder / "bad.ckpt"
    torch.save({**checkpoint, **change}, path)
    return path


# 15. Malformed checkpoints are one error line -------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"hyper_parameters": "oops"},
        {"class_names": 5},
        {"class_names": ["a", "a"]},
        {"preprocessing": {"image_size": 200000, "resize_size": 1, "mean": [0], "std": [1]}},
        {"temperature": -1.0},
        {"state_dict": {"w": "not a tensor"}},
    ],
)
def test_malformed_checkpoints_are_one_error_line(
    change: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bad_checkpoint(tmp_path, change)
    code, err = run_entry(capsys, "test", "--ckpt_path", str(path))
    assert_one_error_line(code, err, "bad.ckpt")


def test_malformed_safetensors_weights_are_one_error_line(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\xff" * 64)
    code, err = run_entry(capsys, *tiny("fit", image_folder), "--model.pretrained", str(weights))
    assert_one_error_line(code, err, "cannot read weights")


# 16. Absurd ONNX metadata is one error line, never "unreadable" for every image --------------


def test_absurd_onnx_metadata_is_one_error_line(
    tmp_path: Path, exported_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    from classifier.onnx_predict import main

    model = onnx.load(str(exported_model))
    for entry in model.metadata_props:
        if entry.key == "resize_size":
            entry.value = "200000"
    hostile = tmp_path / "hostile.onnx"
    onnx.save(model, str(hostile))
    images = make_folder(tmp_path / "imgs", counts={"test": 1}) / "test"
    with pytest.raises(SystemExit) as stop:
        main([str(hostile), str(images), "--output", str(tmp_path / "p.csv")])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "resize_size" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


# 17. Formulas and control characters from names ------------------------------------------------


def test_csv_cells_that_start_a_formula_are_written_as_text(tmp_path: Path) -> None:
    import csv

    from classifier.file_io import write_csv

    path = tmp_path / "x.csv"
    write_csv(path, ["name", "value"], [["=HYPERLINK(1)", -1.5], ["+cmd", 2], ["@x", 3], ["ok", 4]])
    rows = list(csv.reader(path.open()))
    assert rows[1] == ["'=HYPERLINK(1)", "-1.5"] and rows[2][0] == "'+cmd"
    assert rows[3][0] == "'@x" and rows[4][0] == "ok"


def test_control_characters_in_names_never_reach_the_terminal(tmp_path: Path) -> None:
    from classifier.errors import printable
    from classifier.splits import class_name

    assert class_name("cat\x1b[31m") == "cat\\x1b[31m"
    assert printable("a\x1b]0;title\x07b\rc") == "a\\x1b]0;title\\x07b\\x0dc"
    assert printable("line one\nline two\tx") == "line one\nline two\tx"


@pytest.mark.slow
def test_a_file_named_with_escapes_is_shown_escaped_in_warnings(
    image_folder: Path, tmp_path: Path
) -> None:
    (image_folder / "train" / "cat" / "evil\x1b[2J.png").write_bytes(b"not an image")
    command = [EXE, *tiny("fit", image_folder, "--trainer.max_epochs", "1")]
    command += ["--trainer.enable_progress_bar", "false"]  # the bar's own escapes aside
    result = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "evil\\x1b[2J.png" in result.stderr and "\x1b" not in result.stderr
