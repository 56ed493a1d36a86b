"""Exporting a finished checkpoint, and failing loudly when ONNX disagrees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifier.export import export_checkpoint
from classifier.verify import ExportError
from tests.conftest import CONF, run_cli


@pytest.fixture
def trained(image_folder: Path) -> Path:
    cli: Any = run_cli(
        *["fit", "--config", str(CONF / "tiny.yaml"), "--data.data_dir", str(image_folder)]
    )
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def test_export_finished_checkpoint_with_uint8_input(trained: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = export_checkpoint(str(trained), output=str(tmp_path / "m.onnx"), uint8_input=True)
    report = json.loads((tmp_path / "m.export_report.json").read_text())
    assert report["passed"] and report["images"] == 18 and report["top1_agreement"] == 1.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    logits = session.run(None, {"images": np.full((2, 3, 32, 32), 128, np.uint8)})[0]
    assert logits.shape == (2, 3)


def test_disagreement_is_an_error_not_a_log_line(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_checkpoint(str(trained), output=str(tmp_path / "m.onnx"), atol=-1.0)
    assert json.loads((tmp_path / "m.export_report.json").read_text())["passed"] is False
