"""Calibrated probabilities: the temperature is fitted, stored and used by every consumer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from classifier.metrics import CalibrationBins
from classifier.selective import expected_calibration_error, fit_temperature, scores


def _overconfident(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a calibrated model (labels drawn from its softmax), multiplied by ``scale``."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 6, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits * scale, labels


def test_temperature_undoes_a_known_miscalibration() -> None:
    for scale in (3.0, 0.4):  # over- and under-confident
        logits, labels = _overconfident(scale)
        temperature = fit_temperature(logits, labels)
        assert temperature == pytest.approx(scale, rel=0.1)
        before, after = scores(logits, labels, 1.0), scores(logits, labels, temperature)
        assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
        assert after["ece"] < 0.03


def test_ece_counts_each_bin_gap_by_its_images() -> None:
    bins = CalibrationBins(bins=10)
    # Four images at confidence 0.95 (bin 9), three right: gap 0.2; two at 0.55 (bin 5), both
    # right: gap 0.45. ECE = (4 * 0.2 + 2 * 0.45) / 6.
    probabilities = torch.tensor([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 2)
    bins.update(probabilities, torch.tensor([0, 0, 0, 1, 0, 0]))
    assert float(bins.compute()) == pytest.approx((4 * 0.2 + 2 * 0.45) / 6, abs=1e-6)
    table = bins.table()
    assert table["count"][9] == 4 and table["accuracy"][9] == pytest.approx(0.75)
    logits = torch.log(probabilities)
    assert expected_calibration_error(logits, torch.tensor([0, 0, 0, 1, 0, 0]), 10) == (
        pytest.approx(float(bins.compute()), abs=1e-6)
    )


@pytest.mark.slow
def test_fit_stores_the_temperature_where_test_predict_and_export_use_it(tmp_path: Path) -> None:
    import json
    import shutil

    import onnxruntime as ort

    from tests.conftest import make_folder, run_cli, tiny

    data = make_folder(tmp_path / "data", counts={"train": 12, "val": 8, "test": 8})
    for i in range(3):  # mislabelled validation images: errors to calibrate on
        shutil.copy(data / "val" / "cat" / f"cat_00{i}.png", data / "val" / "dog" / f"x{i}.png")
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "3"),
        # Listed before Calibration: the order of the callbacks does not matter.
        "--trainer.callbacks+=classifier.OnnxExport",
        "--trainer.callbacks.export=all",
        "--trainer.callbacks+=classifier.Calibration",
        "--test_after_fit",
        "true",
    )
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "calibration.json").read_text())
    temperature = report["temperature"]
    assert temperature != pytest.approx(1.0) and "note" not in report
    assert report["val"]["after"]["nll"] < report["val"]["before"]["nll"]
    assert set(report["test"]) == {"before", "after"}
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["temperature"] == pytest.approx(temperature, rel=1e-5)
    assert "temperature" not in best["state_dict"]  # not averaged with the weights by EMA
    # Fitted on the logits the validation of best.ckpt's epoch logged: the same as a fresh
    # pass of best.ckpt's weights over val would give.
    from classifier.calibration import _val_logits

    logits, labels = _val_logits(cli.trainer, cli.model, best["state_dict"])
    assert scores(logits, labels, 1.0) == pytest.approx(report["val"]["before"], abs=1e-4)
    assert (run / "calibration_val.png").is_file() and (run / "calibration_test.png").is_file()
    # Both exports' probabilities are the calibrated ones.
    for name in ("model_best.onnx", "model_final.onnx"):
        session = ort.InferenceSession(str(run / name), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        assert float(meta["temperature"]) == pytest.approx(temperature, rel=1e-5), name
        x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
        logits, probabilities = session.run(["logits", "probabilities"], {"images": x})
        scaled = torch.from_numpy(logits).double().div(temperature).softmax(1).numpy()
        assert not np.allclose(
            probabilities, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-3
        )
        assert np.allclose(probabilities, scaled, atol=1e-4), name
    # predict writes calibrated confidences; test logs calibrated ECE and NLL.
    predicted: Any = run_cli(
        "predict",
        "--ckpt_path",
        str(run / "checkpoints" / "best.ckpt"),
        "--data.predict_dir",
        str(data / "test"),
    )
    model = predicted.model
    assert model.temperature == pytest.approx(temperature, rel=1e-5)
    assert {"test/ece", "test/nll", "test/auroc"} <= set(cli.trainer.callback_metrics)


def test_every_rank_gets_the_temperature_before_a_failed_write_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 0 amends best.ckpt; if that write fails, it still reaches the broadcast the other
    ranks wait in (or they would hang until the process group times out), then raises."""
    from types import SimpleNamespace

    from classifier import calibration
    from classifier import checkpoint as checkpoint_module

    events: list[str] = []

    def broadcast(value: Any, src: int = 0) -> Any:
        events.append(f"broadcast {value[0]}")
        return value

    def amend(*args: Any) -> None:
        events.append("amend")
        raise OSError("No space left on device")

    checkpoint = {"state_dict": {"w": torch.zeros(1)}}
    monkeypatch.setattr(checkpoint_module, "read_checkpoint", lambda trainer, path: checkpoint)
    monkeypatch.setattr(checkpoint_module, "amend_checkpoint", amend)
    monkeypatch.setattr(calibration.Calibration, "_calibrate", lambda *a: 0.5)
    monkeypatch.setattr(calibration.Calibration, "_select", lambda *a: None)
    trainer: Any = SimpleNamespace(
        checkpoint_callback=SimpleNamespace(best_model_path="best.ckpt", best_model_score=None),
        loggers=[],
        default_root_dir=".",
        is_global_zero=True,
        interrupted=False,
        strategy=SimpleNamespace(broadcast=broadcast),
    )
    from classifier.model import ImageClassifier

    model = ImageClassifier("test_resnet", ["a", "b"], pretrained=False)
    callback = calibration.Calibration()
    with pytest.raises(OSError, match="No space left"):
        callback.on_train_end(trainer, model)
    assert events == ["amend", "broadcast 0.5"]
    assert model.temperature == 0.5  # every rank's model has it, rank 0's too
