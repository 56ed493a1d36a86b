"""The training loss: cross-entropy with class weights and label smoothing, for hard labels and
for the mixed targets of MixUp/CutMix, normalised the same way in both cases.

PyTorch's ``F.cross_entropy`` divides a class-weighted loss by the summed weights of the
targets, but a probability-target loss by the batch size, so the same batch would weigh
differently with and without mixing. :func:`mixed_cross_entropy` divides by the summed
weights of the mixed targets, which is the hard-label normalisation when the mix is one-hot.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from classifier.splits import DataError


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of integer ``labels``: each image counts with its class's weight."""
    return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)


def mixed_cross_entropy(
    logits: torch.Tensor,
    mix: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of mixed targets (rows of ``mix`` sum to 1; label smoothing not folded in).

    Equals :func:`cross_entropy` when ``mix`` is one-hot. Label smoothing moves
    ``label_smoothing`` of each target uniformly over the classes, as PyTorch does.
    """
    classes = logits.shape[1]
    target = mix * (1.0 - label_smoothing) + label_smoothing / classes
    log_probs = F.log_softmax(logits.float(), dim=1)
    if weight is None:
        return -(target * log_probs).sum(1).mean()
    # Each image weighs as much as its (mixed) class: the denominator F.cross_entropy uses.
    per_image = -(target * log_probs * weight).sum(1)
    return per_image.sum() / (mix * weight).sum()


def mixing(mixup: float, cutmix: float, num_classes: int) -> Any:
    """timm's ``Mixup`` giving mixed one-hot targets (the loss applies label smoothing), or
    ``None``."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        label_smoothing=0.0,
        num_classes=num_classes,
    )


def class_weights(
    setting: str | list[float], counts: list[int], class_names: list[str]
) -> torch.Tensor | None:
    """Per-class loss weights of ``data.class_weights``: ``None`` for ``none``, inverse
    frequency of the train ``counts`` (mean 1) for ``auto``, else the list given.

    Raises:
        DataError: a list whose length is not the number of classes.
    """
    if setting == "none":
        return None
    if setting == "auto":
        found = torch.tensor(counts, dtype=torch.float)
        return found.sum() / (len(found) * found.clamp(min=1))
    if isinstance(setting, str) or len(setting) != len(class_names):
        raise DataError(
            f"class_weights has {len(setting)} values for {len(class_names)} classes "
            f"({', '.join(class_names)})."
        )
    return torch.tensor(setting, dtype=torch.float)
