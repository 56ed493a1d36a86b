"""Learning-rate schedules and optimizers, value by value."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from classifier.model import ImageClassifier
from classifier.optim import lr_multiplier, optimization, stepping_batches


def test_warm_up_rises_linearly_to_the_peak() -> None:
    factor = lr_multiplier("cosine", total_steps=100, steps_per_epoch=10, warmup_epochs=0.5)
    assert [factor(s) for s in range(6)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])


def test_cosine_ends_at_min_lr_ratio() -> None:
    factor = lr_multiplier("cosine", 100, 10, warmup_epochs=1, min_lr_ratio=0.01)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way down
    assert factor(100) == pytest.approx(0.01)
    assert factor(500) == pytest.approx(0.01)  # never below, never back up
    values = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_multistep_decays_at_each_milestone_epoch() -> None:
    factor = lr_multiplier("multistep", 100, 10, milestones=[4, 2], gamma=0.1)
    assert [factor(s) for s in (0, 19, 20, 39, 40, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_constant_holds_after_warm_up() -> None:
    factor = lr_multiplier("constant", 100, 10, warmup_epochs=0.2)
    assert [factor(s) for s in (0, 1, 2, 50, 99)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])


def test_stepping_batches_counts_limits_accumulation_and_max_steps() -> None:
    trainer: Any = SimpleNamespace(
        limit_train_batches=1.0, accumulate_grad_batches=1, max_epochs=5, max_steps=-1
    )
    assert stepping_batches(trainer, 10) == (10, 50)
    trainer.accumulate_grad_batches = 3
    assert stepping_batches(trainer, 10) == (4, 20)  # a last partial accumulation steps too
    trainer.limit_train_batches, trainer.accumulate_grad_batches = 6, 1
    assert stepping_batches(trainer, 10) == (6, 30)
    trainer.limit_train_batches, trainer.max_steps = 0.5, 12
    assert stepping_batches(trainer, 10) == (5, 12)
    trainer.max_epochs = -1
    assert stepping_batches(trainer, 10) == (5, 12)


def _configured(**hparams: Any) -> tuple[torch.optim.Optimizer, Any]:
    model = ImageClassifier("test_resnet", ["a", "b"], pretrained=False, **hparams)
    config = optimization(model.model, model.hparams, steps_per_epoch=10, total_steps=100)
    assert config["lr_scheduler"]["interval"] == "step"  # Lightning steps it per optimizer step
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def test_sgd_is_nesterov_with_no_decay_on_norms_and_biases() -> None:
    optimizer, _ = _configured(optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=1e-4)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = optimizer.param_groups
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in groups)
    decays = sorted(g["weight_decay"] for g in groups)
    assert decays == [0.0, 1e-4]
    no_decay = next(g for g in groups if g["weight_decay"] == 0)
    assert all(p.ndim <= 1 for p in no_decay["params"])


def test_adamw_schedule_is_stepped_per_optimizer_step() -> None:
    optimizer, scheduler = _configured(lr=0.02, warmup_epochs=1, scheduler="cosine")
    assert isinstance(optimizer, torch.optim.AdamW)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.02 / 11)
    assert seen[10] == pytest.approx(0.02)
    assert seen[-1] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
