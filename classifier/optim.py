"""Learning-rate schedules as a per-step multiplier of the base learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

Schedule = Literal["cosine", "multistep", "constant"]


def lr_multiplier(
    schedule: Schedule,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The factor applied to the base LR at optimizer step ``step``.

    Linear warm-up from ~0 over ``warmup_epochs``, then ``cosine`` decay to
    ``min_lr_ratio``, ``multistep`` decay by ``gamma`` at each epoch in ``milestones``, or
    ``constant``.
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    milestone_steps = sorted(m * steps_per_epoch for m in milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "multistep":
            return float(gamma ** sum(step >= m for m in milestone_steps))
        return 1.0

    return factor


def stepping_batches(trainer: Any, batches_per_epoch: int | None) -> tuple[int, int]:
    """Optimizer steps per epoch and in total, from the loader length alone (``None``: another
    data module, whose loader Lightning counts).

    ``trainer.estimated_stepping_batches`` would build and iterate the train loader before a
    resumed run restores its loop state, which makes the first resumed epoch replay epoch 0's
    order; this mirrors its arithmetic without touching the loader.
    """
    if batches_per_epoch is None:
        estimated = max(1, int(trainer.estimated_stepping_batches))
        return max(1, estimated // max(1, trainer.max_epochs or 1)), estimated
    limit = trainer.limit_train_batches
    batches = (
        min(batches_per_epoch, limit) if isinstance(limit, int) else int(batches_per_epoch * limit)
    )
    per_epoch = max(1, math.ceil(batches / max(1, trainer.accumulate_grad_batches)))
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    total = per_epoch * epochs if epochs is not None else None
    if trainer.max_steps not in (None, -1):
        total = trainer.max_steps if total is None else min(total, trainer.max_steps)
    return per_epoch, max(1, total or per_epoch)


def optimization(
    net: Any, hparams: Mapping[str, Any], steps_per_epoch: int, total_steps: int
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``net``: timm's optimizer factory over
    :func:`parameter_groups` (``sgd`` is SGD with Nesterov momentum; ``sam`` wraps
    ``sam_base`` in :class:`~classifier.sam.SAM`) and :func:`lr_multiplier` stepped every
    optimizer step, from the model's ``hparams``. Each group starts at ``lr`` times its
    ``lr_scale``, which the multiplier then scales: at every step a group's rate is
    ``lr x multiplier(step) x lr_scale``."""
    from timm.optim import create_optimizer_v2
    from torch.optim.lr_scheduler import LambdaLR

    from classifier.sam import SAM

    sam = hparams["optimizer"] == "sam"
    optimizer = create_optimizer_v2(
        parameter_groups(net, hparams),
        opt=hparams["sam_base"] if sam else hparams["optimizer"],
        lr=hparams["lr"],
        weight_decay=hparams["weight_decay"],
        momentum=hparams["momentum"],
    )
    for group in optimizer.param_groups:  # the scale applied here: LambdaLR ignores lr_scale
        group["lr"] = hparams["lr"] * group.get("lr_scale", 1.0)
    if sam:
        optimizer = SAM(optimizer, hparams["sam_rho"])
    factor = lr_multiplier(
        hparams["scheduler"],
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=hparams["warmup_epochs"],
        min_lr_ratio=hparams["min_lr_ratio"],
        milestones=hparams["milestones"] or (),
        gamma=hparams["gamma"],
    )
    scheduler = LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def parameter_groups(net: Any, hparams: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The optimizer's parameter groups, named for ``LearningRateMonitor``: no weight decay on
    norms, biases and the model's ``no_weight_decay()`` names (``*_no_decay`` groups); with a
    ``backbone_lr_scale`` or a ``layer_decay`` the classifier head (``head``, scale 1) apart
    from the backbone (``backbone``, or ``backbone_d{k}`` for the layer group ``k`` below the
    top, scale ``layer_decay ** k``), each times ``backbone_lr_scale``. Every parameter is in a
    group from the first step, frozen or not."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    decay, scale = hparams.get("layer_decay"), float(hparams.get("backbone_lr_scale", 1.0))
    wd = hparams["weight_decay"]
    if decay is None:
        groups = param_groups_weight_decay(net, wd, no_weight_decay_list=skip)
    else:
        groups = param_groups_layer_decay(net, wd, no_weight_decay_list=skip, layer_decay=decay)
    if decay is None and scale == 1.0:
        return [{**g, "name": _suffix("network", g)} for g in groups]
    head = {id(p) for p in net.get_classifier().parameters()}
    out: list[dict[str, Any]] = []
    for group in groups:
        below = round(math.log(group.get("lr_scale", 1.0)) / math.log(decay)) if decay else 0
        part = f"backbone_d{below}" if decay else "backbone"
        mine = [p for p in group["params"] if id(p) not in head]
        heads = [p for p in group["params"] if id(p) in head]
        for name, params, lr_scale in (
            (part, mine, group.get("lr_scale", 1.0) * scale),
            ("head", heads, 1.0),
        ):
            if params:
                out.append({**group, "params": params, "lr_scale": lr_scale})
                out[-1]["name"] = _suffix(name, out[-1])
    return out


def _suffix(name: str, group: Mapping[str, Any]) -> str:
    return name if group["weight_decay"] else f"{name}_no_decay"
