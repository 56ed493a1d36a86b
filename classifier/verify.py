"""Checking an exported ONNX file against the PyTorch model on real images."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.errors import UserError
from classifier.image_dataset import load_rgb
from classifier.transforms import Preprocessing, eval_transform, normalize


def readable(
    paths: Sequence[Path], labels: Sequence[int] | np.ndarray, transform: Any
) -> Iterator[tuple[torch.Tensor, int]]:
    """The evaluation-ready image and label of each file that can be read."""
    for path, label in zip(paths, labels, strict=True):
        try:
            image = load_rgb(path)
        except MemoryError:
            raise
        except Exception:  # noqa: S112 (decoders raise many kinds; counted, not fatal)
            continue
        yield transform(image), label


class ExportError(UserError, RuntimeError):
    """An export failed or does not reproduce the PyTorch model."""


def spread(items: Sequence[Any], count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``items`` (every class gets a share)."""
    if count <= 0 or not items:
        return []
    step = max(1, len(items) // count)
    return list(range(0, len(items), step))[:count]


#: Relative closeness to a threshold at which an accept decision is a tie.
TIE = 1e-4


@torch.no_grad()
def verify_onnx(
    path: Path,
    reference: nn.Module,
    paths: Sequence[Path],
    labels: Sequence[int] | np.ndarray,
    pre: Preprocessing,
    uint8_input: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run ``path`` with onnxruntime and ``reference`` (the module the export traced, on
    normalised ``float32`` input, on the CPU) on the same images and compare every output.

    Images that cannot be read (changed since the pre-scan, or never scanned) are left out
    and counted (``unreadable``), as evaluation does.

    Returns:
        ``images`` (compared), ``unreadable``, ``top1_agreement`` (fraction with the same
        top-1 class), ``max_abs_logit_diff``, the top-1 accuracy of each runtime against
        ``labels`` (-1: unknown, not counted); for an export with an accept/reject rule also
        ``accepted_agreement`` (fraction with the same decision, of the images not at a
        threshold) and
        ``max_rel_distance_diff``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    transform = eval_transform(pre)
    mean, std = pre.mean_std()
    reference = reference.eval()
    limits = getattr(reference, "thresholds", None)  # Exportable's (confidence, distance)
    temperature = getattr(reference, "temperature", None)  # Exportable's
    images_ok = list(readable(paths, labels, transform))
    totals: dict[str, float] = {}
    for start in range(0, len(images_ok), batch_size):
        chunk = images_ok[start : start + batch_size]
        images = torch.stack([image for image, _ in chunk])
        floats = normalize(images, mean, std)
        feed = images.numpy() if uint8_input else floats.numpy()
        found = [torch.from_numpy(np.asarray(o)) for o in session.run(None, {"images": feed})]
        truth = torch.tensor([label for _, label in chunk])
        _compare(found, list(reference(floats)), truth, totals, limits, temperature)
    count = max(1, len(images_ok))
    report: dict[str, Any] = {
        "images": len(images_ok),
        "unreadable": len(paths) - len(images_ok),
        "top1_agreement": totals.get("agree", 0) / count,
        "max_abs_logit_diff": totals.get("logit_diff", 0.0),
        "top1_pytorch": totals.get("correct_torch", 0) / count,
        "top1_onnxruntime": totals.get("correct_onnx", 0) / count,
    }
    if "prob_diff" in totals:
        report["max_abs_probability_diff"] = totals["prob_diff"]
    if "accepted_same" in totals:
        report["accepted_agreement"] = totals["accepted_same"] / max(1, totals["decided"])
        report["max_rel_distance_diff"] = totals["distance_diff"]
    return report


def _compare(
    found: list[torch.Tensor],
    expected: list[torch.Tensor],
    truth: torch.Tensor,
    totals: dict[str, float],
    limits: torch.Tensor | None,
    temperature: torch.Tensor | None = None,
) -> None:
    """Add one batch's agreement counts and largest differences to ``totals``. Accept
    decisions are compared where PyTorch's confidence and distance are not at a threshold
    (within :data:`TIE` of it): there rounding decides either way."""

    def add(key: str, value: float, largest: bool = False) -> None:
        totals[key] = max(totals.get(key, 0.0), value) if largest else totals.get(key, 0) + value

    onnx_logits, torch_logits = found[0].double(), expected[0].double()
    # NaN or infinite anywhere is disagreement: inf - inf is NaN, and max(0, NaN) keeps 0.
    finite = onnx_logits.isfinite().all(1) & torch_logits.isfinite().all(1)
    add("logit_diff", _largest_difference(onnx_logits, torch_logits), largest=True)
    add("agree", int(((onnx_logits.argmax(1) == torch_logits.argmax(1)) & finite).sum()))
    add("correct_torch", int(((torch_logits.argmax(1) == truth) & finite).sum()))
    add("correct_onnx", int(((onnx_logits.argmax(1) == truth) & finite).sum()))
    if len(found) >= 2 and isinstance(temperature, torch.Tensor):
        # What ships: the graph's probabilities must be the calibrated softmax of its logits.
        calibrated = (onnx_logits / float(temperature)).softmax(1)
        add("prob_diff", _largest_difference(found[1].double(), calibrated), largest=True)
    if len(found) == 4 and len(expected) == 4:
        distance, reference = found[2].double(), expected[2].double()
        relative = (distance - reference).abs() / reference.abs().clamp_min(1e-6)
        add("distance_diff", _largest_difference(relative, torch.zeros_like(relative)), True)
        decided = torch.ones_like(reference, dtype=torch.bool)
        if isinstance(limits, torch.Tensor) and limits.numel() == 2:
            confidence = expected[1].double().max(1).values
            low, high = float(limits[0]), float(limits[1])
            decided = ((confidence - low).abs() > TIE) & ((reference - high).abs() > TIE * high)
        same = (found[3].bool() == expected[3].bool()) & distance.isfinite() & finite
        add("accepted_same", int((same & decided).sum()))
        add("decided", int(decided.sum()))


def _largest_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference; infinite when either side holds NaN or infinity."""
    if not bool(found.isfinite().all() and expected.isfinite().all()):
        return math.inf
    return float((found - expected).abs().max()) if found.numel() else 0.0
