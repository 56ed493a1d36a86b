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
