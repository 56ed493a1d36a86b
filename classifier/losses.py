"""The training loss: cross-entropy with class weights and label smoothing, for hard labels and
for the mixed targets of MixUp/CutMix, normalised the same way in both cases.

PyTorch's ``F.cross_entropy`` divides a class-weighted loss by the summed weights of the
targets, but a probability-target loss by the batch size, so the same batch would weigh
differently with and without mixing. :func:`mixed_cross_entropy` divides by the summed
weights of the mixed targets, which is the hard-label normalisation when the mix is one-hot.

The training loss kept on the device between host reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from classifier.errors import UserError
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


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the run stops before saving bad weights."""


class LossWindow(torch.nn.Module):
    """The sum and count of the training losses of the current log interval, and whether any
    loss since the start was NaN or infinite, on the model's device (adding a loss never
    synchronises; :meth:`take` reads both back at once)."""

    finite: torch.Tensor
    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("finite", torch.ones((), dtype=torch.bool), persistent=False)
        self.register_buffer("total", torch.zeros(()), persistent=False)
        self.steps = 0

    def add(self, loss: torch.Tensor) -> None:
        """Count one step's loss."""
        detached = loss.detach().float()
        self.finite &= torch.isfinite(detached)
        self.total += detached
        self.steps += 1

    def watch(self, loss: torch.Tensor) -> None:
        """Note whether ``loss`` is finite without counting it (SAM's second pass)."""
        self.finite &= torch.isfinite(loss.detach().float())

    def take(self) -> tuple[float, bool]:
        """The interval's mean loss and whether every loss so far was finite (one host read);
        the interval starts again."""
        mean = self.total / max(1, self.steps)
        value, finite = torch.stack([mean, self.finite.float()]).tolist()
        self.total.zero_()
        self.steps = 0
        return value, bool(finite)

    def all_finite(self) -> bool:
        """Whether every loss since the start was finite (one host read)."""
        return bool(self.finite)


def nonfinite_error(step: int, checkpoint: str) -> NonFiniteLossError:
    """The one-line error for a loss that became NaN/inf by ``step``, naming the last good
    ``checkpoint`` (empty: none yet) and what to try."""
    return NonFiniteLossError(
        f"the training loss became NaN or infinite (by step {step}); stopped without saving."
        f" Last good checkpoint: {checkpoint or 'none yet'}. "
        "Try a lower --model.lr, a longer warm-up, or bf16-mixed instead of 16-mixed."
    )
