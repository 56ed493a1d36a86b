"""Calibrated probabilities: the temperature is fitted, stored and used by every consumer."""

from __future__ import annotations

import pytest
import torch

from classifier.calibration import expected_calibration_error, fit_temperature, scores
from classifier.metrics import CalibrationBins


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
