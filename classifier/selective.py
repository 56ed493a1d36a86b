"""Accept or reject each prediction: selective classification with calibrated confidences and
a distance to the training classes in the network's feature space.

A threshold on the softmax confidence alone cannot reject an image of no known class: on the
demo digits random noise gets a calibrated confidence above the real test images', and energy
scores do no better (``benchmarks/selective.py``). The penultimate features of such an image lie
far from every class, though. :class:`Selector` holds the class means of the training features,
the precision matrix of their shared covariance (shrunk towards its diagonal scale) and two
thresholds chosen on the validation set: the lowest confidence at which the accepted
predictions reach a target accuracy, and the distance that 99 % of validation images stay
within. A prediction is accepted when it passes both. The same arithmetic runs in PyTorch
(``predict``) and inside the exported ONNX graph (an ``accepted`` and a ``distance`` output).

The accept/reject rule of a run: fitted on the best weights'
features of training and validation images when training ends, and recorded with its
coverage and risk-coverage curve per split in ``calibration.json``.

Temperature scaling (Guo et al., 2017): the expected calibration error (ECE) of
probabilities, and the one scalar ``T`` that minimises the validation NLL of
``softmax(logits / T)`` without changing a single prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from typing_extensions import override

from classifier.callback_contract import classifier_module, image_data
from classifier.checked_values import MAX_TEMPERATURE, MIN_TEMPERATURE
from classifier.file_io import read_json, write_json
from classifier.metrics import BINS, CalibrationBins
from classifier.verify import spread

if TYPE_CHECKING:
    from classifier.transforms import Preprocessing


#: Share of the covariance replaced by its mean variance times the identity (Ledoit-Wolf-like
#: shrinkage): few images per feature dimension leave the sample covariance singular.
SHRINKAGE = 0.1
#: Validation images a distance threshold keeps (the rest are rejected as unlike training).
DISTANCE_QUANTILE = 0.99


def features_and_logits(net: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate features (timm's ``pre_logits``) and the logits of a normalised batch,
    in one pass through the network's body."""
    body = net.forward_features(images)  # type: ignore[operator]
    return net.forward_head(body, pre_logits=True), net.forward_head(body)  # type: ignore[operator]


def feature_width(net: nn.Module) -> int | None:
    """The width of ``net``'s penultimate features (its classifier head's input), or ``None``
    when the head does not say."""
    from classifier.backbone import classifier_head

    head = classifier_head(net)
    width = getattr(head, "in_features", None) or getattr(net, "head_hidden_size", None)
    return width if isinstance(width, int) else None


def target_accuracy(val_accuracy: float) -> float:
    """The default target: halve the validation error, at most 0.99."""
    return min(0.99, 1 - (1 - val_accuracy) / 2)


def confidence_threshold(
    confidence: torch.Tensor, correct: torch.Tensor, target: float
) -> tuple[float, float]:
    """The lowest confidence at which the predictions kept (confidence at or above it) are
    right ``target`` of the time, and the share of images it keeps (``(inf, 0)`` when no
    threshold reaches the target)."""
    order = confidence.double().argsort(descending=True)
    hits = correct.double()[order].cumsum(0)
    kept = torch.arange(1, len(order) + 1, dtype=torch.float64)
    reaching = torch.nonzero(hits / kept >= target).flatten()
    if not len(reaching):  # nothing reaches it: accept nothing (no calibrated confidence > 1)
        return math.nextafter(1.0, 2.0), 0.0
    last = int(reaching[-1])
    return float(confidence.double()[order][last]), (last + 1) / len(order)


def risk_coverage(
    confidence: torch.Tensor, correct: torch.Tensor, points: int = 50
) -> dict[str, list[float]]:
    """Accuracy of the accepted predictions against the share accepted, keeping the most
    confident first (``points`` points from the most selective to all)."""
    order = confidence.double().argsort(descending=True)
    hits = correct.double()[order].cumsum(0)
    count = len(order)
    if not count:
        return {"coverage": [], "accuracy": []}
    steps = sorted({max(1, round(count * (i + 1) / points)) for i in range(points)})
    return {
        "coverage": [round(k / count, 6) for k in steps],
        "accuracy": [round(float(hits[k - 1]) / k, 6) for k in steps],
    }


def class_statistics(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means of ``features`` and the precision (inverse) of their shared, shrunk
    covariance, in float64. Classes without an image get the overall mean (never nearest)."""
    feats = features.double()
    overall = feats.mean(0)
    means = torch.stack(
        [feats[labels == c].mean(0) if (labels == c).any() else overall for c in range(num_classes)]
    )
    centred = feats - means[labels]
    covariance = centred.T @ centred / max(1, len(feats) - num_classes)
    scale = covariance.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(covariance), dtype=torch.float64)
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * eye
    return means, torch.linalg.inv(shrunk)


class Distance(nn.Module):
    """The squared Mahalanobis distance of features to the nearest class mean (ONNX-friendly:
    three matrix products, no loop over classes)."""

    def __init__(self, means: torch.Tensor, precision: torch.Tensor) -> None:
        super().__init__()
        self.means = nn.Buffer(means.float())
        self.precision = nn.Buffer(precision.float())
        self.mean_terms = nn.Buffer(((means @ precision) * means).sum(1).float())

    @override
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``min_c (f - mu_c)^T P (f - mu_c)`` for each row ``f``."""
        projected = features.float() @ self.precision
        own = (projected * features.float()).sum(1, keepdim=True)
        cross = projected @ self.means.T
        return (own - 2 * cross + self.mean_terms).min(1).values


@torch.no_grad()
def collect(
    net: nn.Module,
    batches: Iterable[Any],
    pre: Preprocessing,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, logits and labels (on the CPU) of the readable images of ``batches`` (uint8
    images, labels, indices), through ``net`` in eval mode."""
    from classifier.transforms import normalize

    mean, std = pre.mean_std(device)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for images, labels, _ in batches:
        keep = labels >= 0
        feats, logits = features_and_logits(net, normalize(images.to(device), mean, std))
        keep = keep.to(device)
        parts.append((feats[keep].double().cpu(), logits[keep].double().cpu(), labels[keep.cpu()]))
    if not parts:
        empty = torch.empty(0, 0, dtype=torch.float64)
        return empty, empty, torch.empty(0, dtype=torch.long)
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def fit_selector(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    temperature: float,
    num_classes: int,
    target: float | None = None,
) -> Selector:
    """The :class:`Selector` of training features ``train`` (features, labels) with thresholds
    chosen on ``val`` (features, logits, labels) and the calibrated ``temperature``."""
    means, precision = class_statistics(*train, num_classes)
    features, logits, labels = val
    probabilities = (logits / temperature).softmax(1)
    confidence, predicted = probabilities.max(1)
    correct = predicted == labels
    goal = target_accuracy(float(correct.double().mean())) if target is None else target
    threshold, _ = confidence_threshold(confidence, correct, goal)
    distance = Distance(means, precision)(features)
    limit = float(torch.quantile(distance.double(), DISTANCE_QUANTILE))
    selector = Selector(threshold, limit, goal, 0.0, means, precision)
    selector.coverage = float(selector.accepted(confidence, distance).double().mean())
    return selector


def selector_report(
    selector: Selector,
    distance: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> dict[str, Any]:
    """How ``selector`` does on a split (each image's feature ``distance``, logits, label):
    the share accepted, the accuracy of the accepted and of all predictions, and the
    risk-coverage curve of the calibrated confidence."""
    confidence, predicted = (logits.double() / temperature).softmax(1).max(1)
    accepted = selector.accepted(confidence, distance.double())
    correct = predicted == labels
    kept = float(correct[accepted].double().mean()) if accepted.any() else None
    return {
        "images": len(labels),
        "coverage": round(float(accepted.double().mean()), 6),
        "accuracy_accepted": None if kept is None else round(kept, 6),
        "accuracy_all": round(float(correct.double().mean()), 6),
        "risk_coverage": risk_coverage(confidence, correct),
    }


@dataclass
class Selector:
    """What decides acceptance (fitted by ``Calibration``, saved in ``best.ckpt`` and exports).

    Attributes:
        confidence_threshold: the lowest calibrated confidence accepted.
        distance_threshold: the largest feature distance accepted.
        target_accuracy: the validation accuracy of accepted predictions it was chosen for.
        coverage: the share of validation images accepted.
        means: class means of the training features.
        precision: precision matrix of their shared covariance.
    """

    confidence_threshold: float
    distance_threshold: float
    target_accuracy: float
    coverage: float
    means: torch.Tensor
    precision: torch.Tensor
    _on_device: list[Distance] = field(default_factory=list, init=False, repr=False, compare=False)

    def distance(self) -> Distance:
        """The distance as a module (for the model and the ONNX graph)."""
        return Distance(self.means, self.precision)

    def distance_of(self, features: torch.Tensor) -> torch.Tensor:
        """Each row's distance, by a module kept on the features' device (moved once)."""
        if not self._on_device or self._on_device[0].means.device != features.device:
            self._on_device[:] = [self.distance().to(features.device)]
        result: torch.Tensor = self._on_device[0](features)
        return result

    def accepted(self, confidence: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """Which predictions pass both thresholds."""
        return (confidence >= self.confidence_threshold) & (distance <= self.distance_threshold)

    def to_checkpoint(self) -> dict[str, Any]:
        """A ``weights_only``-loadable form (tensors and numbers)."""
        return {
            "confidence_threshold": self.confidence_threshold,
            "distance_threshold": self.distance_threshold,
            "target_accuracy": self.target_accuracy,
            "coverage": self.coverage,
            "means": self.means.float(),
            "precision": self.precision.float(),
        }

    @classmethod
    def from_checkpoint(cls, stored: dict[str, Any]) -> Selector:
        """Inverse of :meth:`to_checkpoint`."""
        return cls(
            float(stored["confidence_threshold"]),
            float(stored["distance_threshold"]),
            float(stored["target_accuracy"]),
            float(stored["coverage"]),
            stored["means"].double(),
            stored["precision"].double(),
        )

    def summary(self) -> dict[str, float]:
        """The thresholds and coverage (for ``calibration.json`` and the ONNX metadata)."""
        return {
            "reject_threshold": round(self.confidence_threshold, 6),
            "distance_threshold": round(self.distance_threshold, 6),
            "target_accuracy": round(self.target_accuracy, 6),
            "coverage": round(self.coverage, 6),
        }


#: Fewest validation images a rule is chosen on.
MIN_RULE_IMAGES = 20


def fit_rule(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    state: dict[str, torch.Tensor],
    temperature: float,
    feature_images: int,
    target: float | None,
) -> tuple[Selector, dict[str, Any]] | None:
    """The rule for the weights ``state``: class statistics of the features of up to
    ``feature_images`` training images (spread over the list, so over the classes),
    thresholds chosen on the validation set, and how it does there (:func:`selector_report`).
    ``None`` when there are too few images to choose one."""
    model = classifier_module(pl_module)
    assert model.preprocessing is not None
    data = image_data(trainer)
    train = data.files("train")
    if train is None or not len(train[0]):
        return None
    net = model.network_copy(state).eval()
    chosen = spread(train[0], feature_images)
    pre, device = model.preprocessing, model.device
    features, _, labels = collect(net, data.eval_loader("train", chosen), pre, device)
    val = collect(net, data.eval_loader("val"), pre, device)
    if len(val[2]) < MIN_RULE_IMAGES or len(labels) <= model.num_classes:
        return None
    selector = fit_selector((features, labels), val, temperature, model.num_classes, target)
    distance = selector.distance()(val[0].float())
    return selector, selector_report(selector, distance, val[1], val[2], temperature)


def record_rule(path: Path, stage: str, found: dict[str, Any], selector: Selector) -> None:
    """Add the rule's thresholds and ``stage``'s report to the ``selective`` part of the JSON
    file ``path`` (``calibration.json``)."""
    loaded = read_json(path)
    report = loaded if isinstance(loaded, dict) else {}
    part = report.get("selective")
    report["selective"] = {**(part if isinstance(part, dict) else {}), **selector.summary()}
    report["selective"][stage] = found
    write_json(path, report)


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
