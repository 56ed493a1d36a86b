"""Fine-tuning a pretrained backbone: train the classifier head alone for the first epochs
(LP-FT), or for the whole run (a linear probe), then the whole network.

The parameter groups do not change when the backbone thaws (every parameter is in the
optimizer from step 0, :func:`~classifier.optim.parameter_groups`): a frozen parameter only has
no gradient, which torch's optimizers skip (no step, no weight decay, no state), so the
optimizer state, the schedule and exact resume work as without freezing. While frozen, the
backbone's parameters do not require gradients, so autograd records nothing through it (no
backward pass), and its batch-norm layers run in evaluation mode (statistics unchanged).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from torch import nn
from typing_extensions import override

from classifier.backbone import classifier_head
from classifier.errors import ConfigError

#: Layers whose weights ``train_bn`` keeps training while the backbone is frozen.
NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


def check_finetuning(
    freeze_backbone_epochs: int, backbone_lr_scale: float, layer_decay: float | None
) -> None:
    """Refuse fine-tuning arguments that cannot work, in one line naming the option.

    Raises:
        ConfigError: a value out of its range, or not finite.
    """
    if freeze_backbone_epochs < -1:
        raise ConfigError(
            f"model.freeze_backbone_epochs must be -1 (frozen for the whole run), 0 (off) or a "
            f"number of epochs, got {freeze_backbone_epochs}"
        )
    if not (math.isfinite(backbone_lr_scale) and backbone_lr_scale > 0):
        raise ConfigError(
            f"model.backbone_lr_scale must be a finite number above 0, got {backbone_lr_scale} "
            "(to keep the backbone fixed, use model.freeze_backbone_epochs -1)"
        )
    if layer_decay is not None and not (math.isfinite(layer_decay) and 0 < layer_decay < 1):
        raise ConfigError(
            f"model.layer_decay must be above 0 and below 1 (0.65-0.9 is usual; null, not 1, "
            f"turns it off), got {layer_decay}"
        )


def _head(net: nn.Module) -> nn.Module:
    """The classifier head (timm's ``get_classifier()``)."""
    head = classifier_head(net)
    if head is None or not any(True for _ in head.parameters()):
        raise ConfigError(
            f"{type(net).__name__} has no classifier head with weights (timm's get_classifier()); "
            "model.freeze_backbone_epochs, backbone_lr_scale and layer_decay need one"
        )
    return head


class FineTuning(pl.LightningModule):
    """The frozen-backbone phase of ``ImageClassifier`` (its ``freeze_backbone_epochs`` and
    ``train_bn`` hyper-parameters); the network is ``self.model``."""

    model: nn.Module
    #: The backbone's trainable parameters as created, each marked if it is a norm's.
    _freezable: list[tuple[nn.Parameter, bool]] | None = None

    def backbone_frozen(self) -> bool:
        """Whether the current epoch trains the head alone."""
        epochs = int(self.hparams.get("freeze_backbone_epochs", 0))
        return epochs == -1 or self.current_epoch < epochs

    def freeze_backbone(self, frozen: bool) -> None:
        """Freeze the backbone (all but the head; with ``train_bn``, its normalisation layers
        keep training) or thaw it. While frozen, its normalisation layers are put in evaluation
        mode (at every batch: Lightning restores each module's mode after validation), and back
        in the module's own mode when thawed."""
        train_bn = bool(self.hparams.get("train_bn", False))
        if self._freezable is None:  # parameters timm made untrainable stay so
            head = {id(p) for p in _head(self.model).parameters()}
            self._freezable = [
                (param, isinstance(module, NORMS))
                for module in self.model.modules()
                for param in module.parameters(recurse=False)
                if param.requires_grad and id(param) not in head
            ]
        for param, norm in self._freezable:
            param.requires_grad_(not frozen or (train_bn and norm))
        statistics = frozen and not train_bn  # kept: the norms evaluate
        for module in self.model.modules():
            if isinstance(module, NORMS) and module.training != (self.training and not statistics):
                module.train(self.training and not statistics)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Freeze or thaw the backbone for this batch's epoch."""
        if int(self.hparams.get("freeze_backbone_epochs", 0)):
            self.freeze_backbone(self.backbone_frozen())

    @override
    def on_fit_start(self) -> None:
        """Refuse DDP without ``find_unused_parameters`` when the backbone is frozen (its
        parameters get no gradient, which plain DDP takes for an error at the next step)."""
        from torch.nn.parallel import DistributedDataParallel

        if not int(self.hparams.get("freeze_backbone_epochs", 0)):
            return
        _head(self.model)
        wrapped = getattr(self.trainer.strategy, "model", None)
        if isinstance(wrapped, DistributedDataParallel) and not wrapped.find_unused_parameters:
            raise ConfigError(
                "model.freeze_backbone_epochs under DDP needs trainer.strategy "
                "ddp_find_unused_parameters_true (frozen parameters get no gradient)"
            )

    @override
    def on_fit_end(self) -> None:
        """Leave every parameter trainable (a later fit builds its groups from all of them)."""
        if int(self.hparams.get("freeze_backbone_epochs", 0)):
            self.freeze_backbone(False)
