"""Scores that find images whose given label is probably wrong.

Two signals, one per kind of split:

- **Training images**: the area under the margin (Pleiss et al., "Identifying Mislabeled Data
  using the Area Under the Margin Ranking", NeurIPS 2020). Each time an image is trained on,
  its margin is the logit of its given class minus the largest other logit; averaged over the
  run, a correctly labelled image's margin grows positive as the network learns it, while a
  mislabelled one stays negative until (if ever) the network memorises it.
- **Validation and test images**: the network never trained on them, so its calibrated
  probabilities are out of sample and confident learning applies (Northcutt et al., "Confident
  Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021): class ``j``'s threshold is
  the mean probability of ``j`` over the images labelled ``j``; an image is suspect when the
  most probable class whose probability reaches its threshold is not its given class. Suspects
  are ranked by the probability of their given label (self-confidence), lowest first.

The few lines are written here rather than imported from cleanlab: cleanlab brings
scikit-learn and SciPy, and SciPy alone makes every command start 0.7 s later (torchmetrics
imports ``scipy.signal`` when it is installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def margins(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's margin (the given class's logit minus the largest other) and that largest
    other class; ``labels`` must be valid class indices."""
    logits = logits.float()
    given = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -torch.inf)
    largest, other = others.max(1)
    return given - largest, other


@dataclass(frozen=True)
class Suspects:
    """Suspect images of one split, most suspect first.

    Attributes:
        indices: positions in the split.
        suggested: the class each image more probably belongs to.
        scores: lower is more suspect (training: area under the margin, in logits;
            evaluation: calibrated probability of the given label).
        estimated: how many labels of the split are probably wrong (-1: no estimate).
    """

    indices: torch.Tensor
    suggested: torch.Tensor
    scores: torch.Tensor
    estimated: int = -1

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Margins:
    """Per training image, on the device: the sum of its margins, how many there are, and its
    latest largest other class (-1: none yet)."""

    sum: torch.Tensor
    count: torch.Tensor
    other: torch.Tensor

    @staticmethod
    def zeros(size: int, device: torch.device) -> Margins:
        """No margins yet for ``size`` images."""
        return Margins(
            torch.zeros(size, dtype=torch.float64, device=device),
            torch.zeros(size, dtype=torch.float64, device=device),
            torch.full((size,), -1, dtype=torch.long, device=device),
        )

    def update(
        self, indices: torch.Tensor, margin: torch.Tensor, other: torch.Tensor, keep: torch.Tensor
    ) -> None:
        """Add one batch's margins where ``keep`` (weights, not a mask: no device sync)."""
        weight = keep.double()
        self.sum.index_add_(0, indices, torch.where(keep, margin.double(), 0.0))
        self.count.index_add_(0, indices, weight)
        self.other.index_put_((indices,), torch.where(keep, other, self.other[indices]))

    def add(self, more: Margins) -> None:
        """Add ``more``'s margins; its largest other classes replace these where known."""
        device = self.sum.device
        self.sum += more.sum.to(device)
        self.count += more.count.to(device)
        newer = more.other.to(device)
        self.other = torch.where(newer >= 0, newer, self.other)


def margins_problem(state: dict[str, Any], size: int, classes: int) -> str | None:
    """What is wrong with a checkpoint's sums for ``size`` training images of ``classes``
    classes (a checkpoint may come from someone else), or ``None``."""
    tensors = [state.get(k) for k in ("sum", "count", "other")]
    if not all(isinstance(t, torch.Tensor) and t.shape == (size,) for t in tensors):
        return f"the checkpoint's sums are not for this run's {size} training images"
    total, count, other = tensors
    assert isinstance(total, torch.Tensor) and isinstance(count, torch.Tensor)
    assert isinstance(other, torch.Tensor)
    if not (total.is_floating_point() and count.is_floating_point()) or other.is_floating_point():
        return "the checkpoint's sums have the wrong types"
    # One class has no other logit: its margins are +inf, which is no reason to refuse.
    if torch.isnan(total).any() or not ((count >= 0).all() and torch.isfinite(count).all()):
        return "the checkpoint's sums are not finite"
    if not bool(((other >= -1) & (other < classes)).all()):
        return f"the checkpoint names classes outside this run's {classes}"
    if bool(((count > 0) & (other < 0)).any()):
        return "the checkpoint has margins without their largest other class"
    batches = state.get("batches")
    if not isinstance(batches, dict) or not all(
        isinstance(batches.get(k), int) and batches[k] >= 0 for k in ("used", "mixed")
    ):
        return "the checkpoint's batch counts are malformed"
    return None


def margin_suspects(sums: torch.Tensor, counts: torch.Tensor, other: torch.Tensor) -> Suspects:
    """Training images whose mean margin (``sums / counts``) is negative, lowest first;
    images never trained on are left out. ``other`` is each image's latest largest other
    class, the suggestion."""
    sums, counts, other = sums.double().cpu(), counts.double().cpu(), other.long().cpu()
    seen = counts > 0
    mean = torch.where(seen, sums / counts.clamp(min=1), torch.inf)
    chosen = torch.nonzero(mean < 0)[:, 0]
    order = chosen[mean[chosen].argsort(stable=True)]
    return Suspects(order, other[order], mean[order].float())


def confident_suspects(probs: torch.Tensor, labels: torch.Tensor) -> Suspects:
    """Images of an evaluation split the model disagrees with: its most probable class, or
    its confident class (confident learning), is not the given label; lowest probability of
    the given label first. :attr:`Suspects.estimated` is confident learning's count of wrong
    labels (images whose confident class differs from their label).

    Confident learning alone misses wrong labels whose true class is less probable than that
    class's mean (its threshold); the model's own disagreement catches those, and the ranking
    by self-confidence puts wrong labels ahead of the model's honest mistakes.

    Args:
        probs: calibrated class probabilities, ``N x C``.
        labels: given labels, ``N`` (negative: unknown, never suspect).
    """
    probs, labels = probs.double().cpu(), labels.long().cpu()
    known = labels >= 0
    num_classes = probs.shape[1]
    if not known.any():
        empty = torch.empty(0, dtype=torch.long)
        return Suspects(empty, empty, torch.empty(0), 0)
    given = labels.clamp(min=0)
    # Class j's threshold: the mean probability of j over the images labelled j.
    totals = torch.zeros(num_classes, dtype=torch.float64)
    totals.index_add_(0, given[known], probs[known].gather(1, given[known, None])[:, 0])
    counts = torch.bincount(given[known], minlength=num_classes).double()
    # A class nobody is labelled with has no threshold: it cannot be anyone's confident class.
    thresholds = torch.where(counts > 0, totals / counts.clamp(min=1), torch.inf)
    above = torch.where(probs >= thresholds, probs, -1.0)
    best, confident = above.max(1)
    flagged = known & (best >= 0) & (confident != given)
    predicted = probs.argmax(1)  # any class, also one this split has no images of
    suspect = flagged | (known & (predicted != given))
    suggested = torch.where(flagged, confident, predicted)
    chosen = torch.nonzero(suspect)[:, 0]
    self_confidence = probs[chosen].gather(1, given[chosen, None])[:, 0]
    keep = self_confidence.argsort(stable=True)
    order = chosen[keep]
    return Suspects(order, suggested[order], self_confidence[keep].float(), int(flagged.sum()))
