"""Exponential moving average of the weights, on Lightning's ``WeightAveraging``.

Lightning's callback already does the hard parts right: validation runs on the averaged weights,
checkpoints store them as ``state_dict`` (so ``best.ckpt`` holds the weights its score came from,
and ``classifier test --ckpt_path best.ckpt`` evaluates them) with the raw weights beside them
for resume, and updates happen once per optimizer step. This subclass adds timm-style decay
warm-up (``n`` is ``trainer.global_step``) and a cadence (``should_update``); the averaging
itself is torch's public ``get_ema_multi_avg_fn`` (one fused lerp per dtype).

Why not Lightning's public update path (``WeightAveraging.on_train_batch_end``, which
``EMAWeightAveraging`` uses too): ``AveragedModel.update_parameters`` reads ``n_averaged`` back
from the device twice per update (``bool(n_averaged == 0)``, ``n_averaged > 0``), a host-device
sync per optimizer step on a GPU, and the training loop keeps none between log intervals
(``tests/test_hot_path.py`` fails with it). On the CPU it costs the same as this path
(``python -m benchmarks.ema_step``, docs/benchmarks.md). So :meth:`EMA.on_train_batch_end`
updates the average itself, which needs two private names of ``WeightAveraging``
(``_average_model``, ``_latest_update_step``; listed in docs/maintaining.md).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

#: ((averaged floats, current floats), (averaged others, current others)).
TensorGroups = tuple[
    tuple[list[torch.Tensor], list[torch.Tensor]], tuple[list[torch.Tensor], list[torch.Tensor]]
]


class EMA(WeightAveraging):
    """Keep an exponential moving average of the model's weights and evaluate with it.

    Args:
        decay: weight kept from the average at each update (0.999-0.9999 typical; lower for
            short runs).
        warmup: ramp the decay up as ``min(decay, (1 + n) / (10 + n))`` over the first
            updates ``n``, so early averages are not dominated by random initial weights.
        update_every_n_steps: update after every N-th optimizer step.
        update_starting_at_step: first optimizer step that updates the average.
        device: keep the average on this device (``cpu`` saves GPU memory); ``None`` keeps it
            beside the model.
    """

    def __init__(
        self,
        decay: float = 0.9998,
        warmup: bool = True,
        update_every_n_steps: int = 1,
        update_starting_at_step: int = 0,
        device: str | None = None,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._update)
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self._step = 0
        self._groups: TensorGroups | None = None
        #: Whether every averaged tensor sits on its current tensor's device (fused updates).
        self._same_device = True

    def current_decay(self, step: int) -> float:
        """The decay used at optimizer step ``step``."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after optimizer steps only (never at epoch ends)."""
        if step_idx is None:
            return False
        return (
            step_idx >= self.update_starting_at_step
            and step_idx % max(1, self.update_every_n_steps) == 0
        )

    def _update(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: torch.Tensor | None
    ) -> None:
        if not averaged:
            return
        floats = averaged[0].is_floating_point()
        decay = self.current_decay(self._step)
        if not self._same_device:  # EMA(device="cpu") on a GPU run: fused ops refuse the mix
            # Blocking copies: a non-blocking GPU-to-CPU copy could be read before it lands.
            for avg, cur in zip(averaged, current, strict=True):
                moved = cur.to(avg.device)
                avg.lerp_(moved, 1.0 - decay) if floats else avg.copy_(moved)
        elif floats:  # one fused lerp over the list (torch._foreach_lerp_ inside)
            average = get_ema_multi_avg_fn(decay)  # type: ignore[no-untyped-call]  # torch: untyped
            average(averaged, current, _n)
        else:  # integer buffers such as num_batches_tracked: copied (a lerp would truncate)
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Update once per optimizer step, without a host-device sync.

        ``AveragedModel.update_parameters`` (Lightning's path) checks ``n_averaged`` on the
        device every step (a sync on GPUs); here the first update is known from the step count
        instead, and the tensors are paired once per fit.
        """
        self._step = trainer.global_step
        if trainer.global_step <= self._latest_update_step:
            return  # still accumulating gradients
        if not self.should_update(step_idx=trainer.global_step - 1):
            return
        assert self._average_model is not None
        if self._groups is None:
            self._groups = self._tensor_groups(pl_module)
        (avg_float, cur_float), (avg_other, cur_other) = self._groups
        with torch.no_grad():
            if self._latest_update_step == 0:  # first update: start from the current weights
                for avg, cur in zip(avg_float + avg_other, cur_float + cur_other, strict=True):
                    avg.copy_(cur)
            else:
                self._update(avg_float, cur_float, None)
                self._update(avg_other, cur_other, None)
            self._average_model.n_averaged += 1
        self._latest_update_step = trainer.global_step

    def _tensor_groups(self, pl_module: pl.LightningModule) -> TensorGroups:
        """(averaged, current) tensors, float and other, paired once: their objects stay the
        same for the whole fit (swaps copy ``.data``)."""
        assert self._average_model is not None
        module = self._average_model.module
        averaged = [*module.parameters(), *module.buffers()]
        current = [t.detach() for t in (*pl_module.parameters(), *pl_module.buffers())]
        pairs = zip(averaged, current, strict=True)
        self._same_device = all(a.device == c.device for a, c in pairs)
        floats = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        others = [i for i, t in enumerate(averaged) if not t.is_floating_point()]
        return (
            ([averaged[i] for i in floats], [current[i] for i in floats]),
            ([averaged[i] for i in others], [current[i] for i in others]),
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Create the averaged model (Lightning) and forget tensors paired in an earlier fit."""
        super().setup(trainer, pl_module, stage)
        self._groups = None

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Restore raw and averaged weights when resuming ``fit``.

        Outside ``fit`` (``trainer.test(ckpt_path="best")`` after training, say) the averaged
        weights in ``state_dict`` are what must be evaluated, so nothing is swapped back.
        """
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
