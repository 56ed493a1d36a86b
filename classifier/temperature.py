"""Temperature scaling (Guo et al., 2017): the expected calibration error (ECE) of
probabilities, and the one scalar ``T`` that minimises the validation NLL of
``softmax(logits / T)`` without changing a single prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from classifier.checked_values import MAX_TEMPERATURE, MIN_TEMPERATURE
from classifier.metrics import BINS, CalibrationBins


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, bins: int = BINS
) -> float:
    """ECE (top label, equal-width bins) of ``softmax(logits)``."""
    metric = CalibrationBins(bins, sync_on_compute=False)  # this process's logits only
    metric.update(logits.float().softmax(dim=1), labels)
    return float(metric.compute())


#: Fewest validation images a temperature is fitted on.
MIN_IMAGES = 20


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` (LBFGS on ``log T``);
    callable from any hook, inference mode included."""
    with torch.inference_mode(False), torch.enable_grad():
        # A copy made outside inference mode: tensors made inside it cannot enter autograd.
        logits, labels = logits.detach().cpu().double().clone(), labels.cpu().clone()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))


def scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """ECE and NLL of ``softmax(logits / temperature)``."""
    scaled = logits.double() / temperature
    return {
        "ece": round(expected_calibration_error(scaled, labels), 6),
        "nll": round(float(F.cross_entropy(scaled, labels)), 6),
    }


def diagram_data(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[dict[str, tuple[list[float], float]], list[float]]:
    """Accuracy per confidence bin and ECE before and after scaling, and the images per bin
    after: the plain data of a reliability diagram."""
    curves, counts = {}, []
    for name, t in (("before", 1.0), (f"after (T = {temperature:.3g})", temperature)):
        bins = CalibrationBins(sync_on_compute=False)
        bins.update((logits.double() / t).softmax(dim=1), labels)
        table = bins.table()
        curves[name], counts = (table["accuracy"], float(bins.compute())), table["count"]
    return curves, counts
