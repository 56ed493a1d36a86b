"""``classifier-predict``: predictions from the exported ONNX file alone, without torch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_cli, tiny


def _without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import torch`` (and Lightning, torchvision, timm) fails."""
    blocker = tmp_path / "blocked"
    for name in ("torch", "torchvision", "lightning", "timm", "pytorch_lightning"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}


def _predict(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "classifier.onnx_predict", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture
def exported(image_folder: Path) -> dict[str, Any]:
    cli: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.callbacks+=classifier.OnnxExport"),
    )
    run = Path(cli.trainer.log_dir)
    best = str(run / "checkpoints" / "best.ckpt")
    images = str(image_folder / "val")
    predicted: Any = run_cli("predict", "--ckpt_path", best, "--data.predict_dir", images)
    torch_rows = _rows(Path(predicted.trainer.log_dir) / "predictions.csv")
    return {"onnx": run / "model.onnx", "images": image_folder / "val", "torch": torch_rows}


@pytest.mark.slow
def test_onnx_only_predictions_match_classifier_predict(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "onnx_predictions.csv"
    result = _predict(
        _without_torch(tmp_path),
        str(exported["onnx"]),
        str(exported["images"]),
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    onnx_rows, torch_rows = _rows(out), exported["torch"]
    assert list(onnx_rows[0]) == list(torch_rows[0])  # the same columns, in the same order
    by_path = {r["path"]: r for r in torch_rows}
    agree = sum(r["predicted"] == by_path[r["path"]]["predicted"] for r in onnx_rows)
    assert len(onnx_rows) == len(torch_rows) == 18 and agree / len(onnx_rows) >= 0.99
    for row in onnx_rows:
        assert abs(float(row["confidence"]) - float(by_path[row["path"]]["confidence"])) < 0.02


@pytest.mark.slow
def test_bad_inputs_give_marked_rows_or_one_error_line(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    env = _without_torch(tmp_path)
    folder = tmp_path / "mixed" / "cat"
    folder.mkdir(parents=True)
    good = next(exported["images"].rglob("*.png"))
    (folder / "good.png").write_bytes(good.read_bytes())
    (folder / "text.png").write_text("not an image")
    from PIL import Image

    jpeg = folder / "cut.jpg"
    Image.open(good).convert("RGB").save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated
    out = tmp_path / "mixed.csv"
    result = _predict(env, str(exported["onnx"]), str(tmp_path / "mixed"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["good.png"]["error"] == "" and rows["good.png"]["true"] == "cat"
    assert rows["text.png"]["error"] == rows["cut.jpg"]["error"] == "unreadable"
    assert rows["text.png"]["predicted"] == "" and rows["cut.jpg"]["true"] == "cat"

    missing = _predict(env, str(exported["onnx"]), str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("error:") and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
