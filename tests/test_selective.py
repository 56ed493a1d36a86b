"""Accept or reject each prediction: the thresholds, the feature distance, and the accepted
column and outputs of every route (predict, the ONNX export, classifier-predict)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.selective import (
    Distance,
    Selector,
    class_statistics,
    confidence_threshold,
    fit_selector,
    risk_coverage,
    target_accuracy,
)
from tests.conftest import make_folder, run_cli, tiny


def test_the_threshold_is_the_lowest_confidence_reaching_the_target() -> None:
    confidence = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = torch.tensor([True, True, True, False, True, False])
    # Kept from the top: 1/1, 2/2, 3/3, 3/4, 4/5, 4/6.
    assert confidence_threshold(confidence, correct, 0.8) == (pytest.approx(0.7), 5 / 6)
    assert confidence_threshold(confidence, correct, 1.0) == (pytest.approx(0.9), 0.5)
    threshold, coverage = confidence_threshold(confidence, ~correct & False, 0.5)
    assert threshold > 1.0 and coverage == 0.0  # nothing reaches it: accept nothing
    assert target_accuracy(0.9) == pytest.approx(0.95)
    assert target_accuracy(0.999) == 0.99


def test_the_risk_coverage_curve_ends_at_the_overall_accuracy() -> None:
    rng = torch.Generator().manual_seed(0)
    confidence = torch.rand(500, generator=rng)
    correct = torch.rand(500, generator=rng) < confidence  # confident ones are right more often
    curve = risk_coverage(confidence, correct)
    assert curve["coverage"][-1] == 1.0
    assert curve["accuracy"][-1] == pytest.approx(float(correct.double().mean()), abs=1e-6)
    assert curve["accuracy"][0] > curve["accuracy"][-1]
    assert curve["coverage"] == sorted(curve["coverage"])


def test_the_distance_is_the_mahalanobis_distance_to_the_nearest_class() -> None:
    rng = torch.Generator().manual_seed(1)
    features = torch.randn(300, 6, generator=rng, dtype=torch.float64)
    labels = torch.arange(300) % 3
    features += labels[:, None].double() * 4
    means, precision = class_statistics(features, labels, 3)
    queries = torch.randn(20, 6, generator=rng, dtype=torch.float64) * 5
    brute = torch.stack(
        [torch.stack([(q - m) @ precision @ (q - m) for m in means]).min() for q in queries]
    )
    assert torch.allclose(Distance(means, precision)(queries.float()).double(), brute, rtol=1e-4)


def test_a_fitted_rule_rejects_what_lies_far_from_every_class() -> None:
    rng = torch.Generator().manual_seed(2)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % 4
        features = torch.randn(count, 8, generator=rng, dtype=torch.float64)
        features[torch.arange(count), labels] += 6.0
        logits = features[:, :4] * 2
        return features, logits, labels

    train, val = split(800), split(400)
    selector = fit_selector(train[::2], val, temperature=1.0, num_classes=4)
    assert 0.95 <= selector.coverage <= 1.0
    far = torch.randn(50, 8, generator=rng, dtype=torch.float64) * 3 + 30
    distance = selector.distance()(far.float())
    assert not selector.accepted(torch.ones(50), distance).any()
    stored = Selector.from_checkpoint(selector.to_checkpoint())
    assert stored.summary() == selector.summary()
    assert torch.allclose(stored.means, selector.means.float().double())


def _noise(folder: Path, count: int, side: int = 40) -> None:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"noise_{i:02d}.png")


def _accepted(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {Path(row["path"]).name: row["accepted"] for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_every_route_accepts_real_images_and_rejects_images_of_no_class(tmp_path: Path) -> None:
    """Fit with calibration, then predict a folder of test images and noise three ways:
    ``classifier predict``, the ONNX export's ``accepted`` output through classifier-predict,
    and the calibration report's test section."""
    from classifier.onnx_predict import predict

    data = make_folder(tmp_path / "data", counts={"train": 24, "val": 10, "test": 10})
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "4", "--test_after_fit", "true"),
        "--trainer.callbacks+=classifier.Calibration",
        "--trainer.callbacks+=classifier.OnnxExport",
    )
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "calibration.json").read_text())["selective"]
    assert {"reject_threshold", "distance_threshold", "coverage", "val", "test"} <= set(report)
    for stage in ("val", "test"):
        curve = report[stage]["risk_coverage"]
        assert curve["coverage"][-1] == 1.0
        assert curve["accuracy"][-1] == pytest.approx(report[stage]["accuracy_all"])
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["selective"]["distance_threshold"] == pytest.approx(report["distance_threshold"])

    images = tmp_path / "incoming"
    for name in ("cat", "dog", "fox"):
        for source in sorted((data / "test" / name).iterdir()):
            (images / name).mkdir(parents=True, exist_ok=True)
            (images / name / source.name).write_bytes(source.read_bytes())
    _noise(images / "unknown", 12)
    run_cli(
        "predict",
        "--ckpt_path",
        str(run / "checkpoints" / "best.ckpt"),
        "--data.predict_dir",
        str(images),
    )
    torch_rows = _accepted(run / "predict" / "predictions.csv")
    predict(run / "model.onnx", images, tmp_path / "onnx.csv")
    onnx_rows = _accepted(tmp_path / "onnx.csv")
    assert onnx_rows == torch_rows  # the graph computes the same decision as PyTorch
    noise = [v for k, v in torch_rows.items() if k.startswith("noise")]
    real = [v for k, v in torch_rows.items() if not k.startswith("noise")]
    assert set(torch_rows.values()) <= {"true", "false"} and len(noise) == 12
    assert noise.count("false") == len(noise)  # no image of no class is accepted
    assert real.count("true") >= 0.8 * len(real)
    exported = json.loads((run / "export_report.json").read_text())
    assert exported["accepted_agreement"] == 1.0 and exported["passed"]


def test_the_gallery_shows_confidences_with_the_models_temperature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from classifier import sample_grids

    drawn: list[tuple[list[str], str]] = []
    monkeypatch.setattr(
        sample_grids,
        "_save_grid",
        lambda t, i, captions, c, title, p, s: drawn.append((captions, title)),
    )
    data: Any = SimpleNamespace(eval_image=lambda split, index: torch.zeros(3, 8, 8))
    trainer: Any = SimpleNamespace(loggers=[], default_root_dir=str(tmp_path))
    # score, index, label, then the logits of two classes
    rows = torch.tensor([[5.0, 0, 1, 4.0, 0.0], [1.0, 1, 0, 1.0, 0.0]])
    sample_grids.SampleGrids._draw(trainer, data, ["a", "b"], rows, 3, 0, 1.0)
    sample_grids.SampleGrids._draw(trainer, data, ["a", "b"], rows, 3, 0, 4.0)
    raw, calibrated = drawn
    assert raw[0][0].endswith("confidence 0.98") and calibrated[0][0].endswith("confidence 0.73")
    assert "pred: a" in raw[0][0] and raw[0][0].startswith("true: b")
    assert "T = 4" in calibrated[1] and "calibrated" not in raw[1]
