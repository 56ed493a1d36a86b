"""Sharpness-aware minimisation (Foret et al., "Sharpness-Aware Minimization for Efficiently
Improving Generalization", ICLR 2021) around any optimizer.

Each step takes two forward-backward passes through Lightning's optimizer closure: the
gradient ``g`` at the weights ``w``, then the gradient at ``w + rho * g / ||g||`` (the worst
nearby point to first order), which the base optimizer applies at ``w``. Lightning calls the
closure from ``optimizer.step`` (as it does for LBFGS), so DDP averages both passes'
gradients, and the base optimizer's state is the checkpoint's (exact resume).

With ``accumulate_grad_batches > 1`` the perturbation comes from the whole window's gradient
(the same ``w + rho * g / ||g||`` as one large batch), and the second pass replays every
micro-batch of the window at the perturbed weights, one closure call each: the model keeps the
window's inputs (on the device) for it and sets :attr:`SAM.replays`. The step is then the one a
batch as large as the window would take (exactly so for networks without batch statistics; a
window an epoch's end cuts to m micro-batches steps with m/k of the mean, as Lightning's
accumulation does for every optimizer);
under DDP each replay averages its gradients over the processes. Gradient clipping applies once,
to the second pass's whole sum (``ImageClassifier.configure_gradient_clipping``: not to the
first pass, whose gradient only sets the ascent's direction). Lightning's
``on_before_optimizer_step`` hooks still run after every closure call (1 + k per step).

Not supported, with a clear error: ``precision: 16-mixed`` (its gradient scaler steps the
optimizer without a closure; ``bf16-mixed`` works).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from typing_extensions import override


class SAM(Optimizer):
    """Sharpness-aware steps of ``base``, which keeps its own parameter groups and state
    (learning-rate schedules change them through this optimizer).

    Args:
        base: the optimizer that takes the step (e.g. AdamW or SGD over the model).
        rho: radius of the neighbourhood, in the units of the weights (Foret et al.: 0.05).

    Attributes:
        perturbed: ``True`` while the second pass runs (at the perturbed weights).
        replays: closure calls of the second pass: one per micro-batch of the accumulation
            window (set by the model; 1 without accumulation).
    """

    def __init__(self, base: Optimizer, rho: float = 0.05) -> None:
        if not rho > 0:
            raise ValueError(f"SAM's rho must be positive, got {rho}")
        self.base = base
        self.rho = rho
        self.perturbed = False
        self.replays = 1
        super().__init__(base.param_groups, {"rho": rho})
        self.param_groups = base.param_groups  # one set: schedulers reach the base
        self.state = base.state

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The first pass (``closure``: the loss and its gradients, summed over the window),
        then :attr:`replays` calls of ``closure`` at the perturbed weights from zeroed
        gradients, then the base optimizer's step at the original weights with the second
        pass's gradients.

        Raises:
            RuntimeError: no closure (16-mixed precision, or a manual ``step()``).
        """
        if closure is None:
            raise RuntimeError(
                "SAM needs the optimizer closure: use precision bf16-mixed or 32 (16-mixed's "
                "gradient scaler steps the optimizer without it)"
            )
        with torch.enable_grad():
            loss = closure()
        shifts = self._ascend()
        self.perturbed = True
        try:
            self.base.zero_grad()  # with accumulation, Lightning's closure does not
            for _ in range(max(1, self.replays)):
                with torch.enable_grad():
                    closure()
        finally:
            self.perturbed = False
            for param, shift in shifts:
                param.sub_(shift)
        self.base.step()
        return loss

    def _ascend(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move every weight with a gradient by ``rho * g / ||g||`` (the global norm); the
        shifts, to undo it."""
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return []
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])
        )
        scale = self.rho / (norm + 1e-12)
        shifts = []
        for param in params:
            assert param.grad is not None
            shift = param.grad * scale.to(param.grad.device)
            param.add_(shift)
            shifts.append((param, shift))
        return shifts

    @override
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (of the base optimizer's parameters: the same ones)."""
        self.base.zero_grad(set_to_none=set_to_none)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (SAM itself keeps nothing between steps)."""
        return self.base.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base optimizer's state."""
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups
        self.state = self.base.state


Kept = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


class Window:
    """The accumulation window's micro-batches (inputs, targets, first-pass outputs), kept on
    the device for SAM's second pass, which replays them in order."""

    def __init__(self) -> None:
        self._kept: list[Kept] = []

    def keep(
        self, sam: SAM, inputs: torch.Tensor, targets: torch.Tensor, outputs: dict[str, Any]
    ) -> None:
        """Keep one micro-batch (its outputs but the loss); ``sam`` replays them all."""
        self._kept.append((inputs, targets, {k: v for k, v in outputs.items() if k != "loss"}))
        sam.replays = len(self._kept)

    def replay(self) -> Kept:
        """The next micro-batch to replay."""
        return self._kept.pop(0)

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        """Forget a window that was never stepped (an interrupted epoch)."""
        self._kept.clear()


def check_rho(optimizer: str, rho: float) -> None:
    """Refuse a radius SAM cannot use (with ``optimizer: sam``; before any data is read).

    Raises:
        ConfigError: ``rho`` is not positive.
    """
    from classifier.errors import ConfigError

    if optimizer == "sam" and not rho > 0:
        raise ConfigError(f"model.sam_rho must be positive with model.optimizer sam, got {rho}")


def check_sam_trainer(trainer: Any) -> None:
    """Refuse the trainer settings SAM cannot honour.

    Raises:
        ConfigError: ``16-mixed`` precision.
    """
    from classifier.errors import ConfigError

    precision = str(getattr(trainer, "precision", ""))
    if precision in ("16-mixed", "16"):
        raise ConfigError(
            f"model.optimizer sam does not work with precision {precision}: its gradient "
            "scaler steps the optimizer without SAM's second pass; use bf16-mixed or 32-true"
        )
