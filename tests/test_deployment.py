"""Shipping a model: the export drops into the pipeline users run today
(``ortizeg/classifier-training``'s ONNX inferencer), an INT8 export is verified like the fp32
one, and every prediction comes with an accept/reject decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_folder, run_cli, tiny

#: The data settings that reproduce that inferencer's fixed preprocessing (README).
PIPELINE = ["--data.image_size", "224", "--data.crop_pct", "0.875"]
PIPELINE += ["--data.interpolation", "bilinear"]


class ExistingInferencer:
    """What ``classifier_training.inference.ONNXClassificationInferencer`` does with an export
    (rewritten here from its documented behaviour): ``labels_mapping.json``'s ``idx_to_class``
    (string keys) and ``normalization``, torchvision ``Resize(256)``, ``CenterCrop(224)``,
    ``ToTensor``, ``Normalize``, the first output of the session, a plain softmax."""

    def __init__(self, model: Path, mapping: Path) -> None:
        import onnxruntime as ort
        from torchvision import transforms

        labels = json.loads(mapping.read_text())
        self.idx_to_class = {int(k): v for k, v in labels["idx_to_class"].items()}
        norm = labels["normalization"]
        self.transform = transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(mean=norm["mean"], std=norm["std"]),
            ]
        )
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, image: Image.Image) -> str:
        tensor = self.transform(image.convert("RGB"))
        logits = self.session.run(None, {self.input_name: tensor.unsqueeze(0).numpy()})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        return self.idx_to_class[int(np.argsort(probs)[::-1][0])]


@pytest.mark.slow
def test_the_export_drops_into_the_existing_inference_pipeline(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 12, "val": 6, "test": 8})
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "2", *PIPELINE),
        "--trainer.callbacks+=classifier.OnnxExport",
        "--test_after_fit",
        "true",
    )
    run = Path(cli.trainer.log_dir)
    mapping = json.loads((run / "labels_mapping.json").read_text())
    names = cli.model.class_names
    assert mapping["num_classes"] == len(names)
    assert mapping["class_to_idx"] == {n: i for i, n in enumerate(names)}
    assert mapping["idx_to_class"] == {str(i): n for i, n in enumerate(names)}
    assert mapping["normalization"] == {"mean": mapping["mean"], "std": mapping["std"]}
    assert (mapping["image_size"], mapping["resize_size"]) == (224, 256)

    inferencer = ExistingInferencer(run / "model.onnx", run / "labels_mapping.json")
    images = sorted((data / "test").rglob("*.png"))
    theirs = [inferencer.predict(Image.open(p)) for p in images]
    truth = [p.parent.name for p in images]
    their_top1 = np.mean([a == b for a, b in zip(theirs, truth, strict=True)])
    ours = float(cli.trainer.callback_metrics["test/top1"])
    assert their_top1 == pytest.approx(ours, abs=1e-6)
    assert ours > 1 / len(names)  # the comparison means something: better than chance


@pytest.fixture
def trained(tmp_path: Path) -> dict[str, Any]:
    data = make_folder(tmp_path / "data", counts={"train": 12, "val": 8})
    cli: Any = run_cli(*tiny("fit", data, "--trainer.max_epochs", "2"))
    return {"data": data, "best": cli.trainer.checkpoint_callback.best_model_path}


@pytest.mark.slow
def test_an_int8_export_is_verified_like_the_fp32_one(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    import onnxruntime as ort

    from classifier.export import export_checkpoint

    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    export_checkpoint(trained["best"], str(out), quantize="int8", verify_images=24)
    int8 = out.with_name("m_int8.onnx")
    report = json.loads(out.with_name("m_int8.export_report.json").read_text())
    assert report["passed"] and report["images"] == 24 and report["top1_agreement"] >= 0.99
    assert {"top1_pytorch", "top1_onnxruntime", "calibration_images"} <= set(report)
    assert report["size_ratio"] == pytest.approx(int8.stat().st_size / out.stat().st_size, abs=1e-3)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["quantization"]).startswith("int8") and "class_names" in meta
    assert any("QuantizeLinear" in n.op_type for n in __import__("onnx").load(str(int8)).graph.node)
    mapping = json.loads(out.with_name("m_int8.labels_mapping.json").read_text())
    assert mapping["quantization"] == "int8" and mapping["idx_to_class"]


@pytest.mark.slow
def test_an_int8_export_that_fails_its_check_leaves_the_fp32_one(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    from classifier.export import export_checkpoint
    from classifier.verify import ExportError

    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="INT8 export"):
        export_checkpoint(trained["best"], str(out), quantize="int8", int8_min_agreement=1.01)
    assert out.is_file() and json.loads(out.with_name("m.export_report.json").read_text())["passed"]
    assert not out.with_name("m_int8.onnx").exists()
    assert not list(tmp_path.glob(".*unverified"))
    failed = json.loads(out.with_name("m_int8.export_report.json").read_text())
    assert failed["passed"] is False
