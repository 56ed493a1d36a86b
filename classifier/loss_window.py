"""The training loss kept on the device between host reads."""

from __future__ import annotations

import torch

from classifier.errors import UserError


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
