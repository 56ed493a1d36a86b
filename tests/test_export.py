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


@pytest.mark.slow
def test_export_finished_checkpoint_with_uint8_input(trained: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = export_checkpoint(str(trained), output=str(tmp_path / "m.onnx"), uint8_input=True)
    report = json.loads((tmp_path / "m.export_report.json").read_text())
    assert report["passed"] and report["images"] == 18 and report["top1_agreement"] == 1.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    logits = session.run(None, {"images": np.full((2, 3, 32, 32), 128, np.uint8)})[0]
    assert logits.shape == (2, 3)


@pytest.mark.slow
def test_disagreement_is_an_error_not_a_log_line(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_checkpoint(str(trained), output=str(tmp_path / "m.onnx"), min_agreement=1.01)
    assert json.loads((tmp_path / "m.export_report.json").read_text())["passed"] is False


def test_both_routes_share_one_pass_rule_and_one_writer(tmp_path: Path) -> None:
    from classifier.export import ExportOptions, export_and_verify
    from classifier.model import ImageClassifier
    from classifier.transforms import Preprocessing
    from tests.conftest import make_folder

    data = make_folder(tmp_path / "data", counts={"val": 4})
    split = sorted((data / "val").rglob("*.png"))
    labels = [["cat", "dog", "fox"].index(p.parent.name) for p in split]
    net = ImageClassifier("test_resnet", ["cat", "dog", "fox"], pretrained=False).model
    pre = Preprocessing.from_crop_pct(32, 1.0, "bilinear", (0.5,) * 3, (0.25,) * 3)
    # min_agreement above 1 can never pass: the rule, not the logit tolerance, decides.
    strict = ExportOptions(verify_images=6, min_agreement=1.01)
    with pytest.raises(ExportError, match=r"min 1\.01"):
        export_and_verify(
            net, tmp_path / "a.onnx", ["cat", "dog", "fox"], pre, strict, (split, labels)
        )
    report = json.loads((tmp_path / "a.export_report.json").read_text())
    assert report["images"] == 6 and report["passed"] is False
    assert json.loads((tmp_path / "a.labels_mapping.json").read_text())["class_names"][2] == "fox"
    # Without images the report says so instead of claiming a pass.
    export_and_verify(net, tmp_path / "model.onnx", ["cat", "dog", "fox"], pre, ExportOptions())
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["verified"] is False and "passed" not in report


@pytest.mark.slow
def test_offline_export_applies_min_agreement(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="top-1 agreement"):
        export_checkpoint(str(trained), output=str(tmp_path / "m.onnx"), min_agreement=1.01)
