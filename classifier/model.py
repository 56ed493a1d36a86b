"""``ImageClassifier``: any timm backbone as a LightningModule."""

from __future__ import annotations

import copy
from typing import Any, Literal, cast

import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from classifier.backbone import Runner, create_backbone, resample_checkpoint
from classifier.callback_contract import optional_image_data
from classifier.checkpoint import CheckpointError, SafeLoading, rule_of, upgrade
from classifier.errors import printable
from classifier.finetune import FineTuning, check_finetuning
from classifier.losses import (
    LossWindow,
    NonFiniteLossError,
    cross_entropy,
    mixed_cross_entropy,
    mixing,
    nonfinite_error,
)
from classifier.metrics import StageMetrics, TrainUnreadable, summary_metrics, warn_unreadable
from classifier.optim import Schedule, optimization, stepping_batches
from classifier.preflight import refuse_half_weights
from classifier.sam import SAM, Window, check_rho, check_sam_trainer
from classifier.selective import Selector, features_and_logits
from classifier.transforms import Preprocessing, tta_log_probs

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


EvalStage = Literal["val", "test"]


class ImageClassifier(FineTuning, SafeLoading):
    """Single-label image classifier on a timm backbone.

    Args:
        model_name: any timm model name, e.g. ``resnet50``, ``convnext_tiny``,
            ``vit_small_patch16_224`` (``timm.list_models()`` lists them).
        class_names: class names in label order; filled from the data (``train/`` folders)
            or the checkpoint, never typed by hand.
        pretrained: ``true`` downloads timm hub weights; a path loads a local
            ``.safetensors``/``.pth`` file (for machines without internet); ``false`` starts
            from random weights.
        drop_rate: dropout before the classifier head.
        drop_path_rate: stochastic depth rate (ConvNeXt/ViT/ResNet in timm).
        image_size: the side of the training images, linked from ``data.image_size``: models
            built for one size (ViT, DINOv2, EVA02, Swin, ...) are created for it, their
            position embeddings resampled; ``None`` keeps the model's native size.
        freeze_backbone_epochs: train only the classifier head (timm's ``get_classifier()``)
            for this many epochs, then the whole network (LP-FT); ``-1`` keeps the backbone
            frozen for the whole run (a linear probe). Frozen, the backbone's weights and
            normalisation statistics stay unchanged and no backward pass runs through it.
        train_bn: while the backbone is frozen, train its normalisation layers (fastai).
        backbone_lr_scale: the backbone's learning rate as a fraction of the head's.
        layer_decay: layer-wise learning-rate decay over timm's layer groups: a layer ``k``
            groups below the head trains at ``layer_decay ** k`` (0.65-0.9 for ViTs); ``None``
            is off. Every group's rate is ``lr`` x schedule x its scale, at every step.
        label_smoothing: cross-entropy label smoothing (0.1 is a common choice).
        optimizer: ``adamw``, ``sgd`` (with Nesterov momentum) or ``sam`` (sharpness-aware
            steps of ``sam_base``); bias and norm weights get no weight decay.
        lr: peak learning rate, reached after warm-up.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        momentum: SGD momentum (ignored by AdamW).
        sam_base: with ``optimizer: sam``, the optimizer that takes SAM's steps.
        sam_rho: with ``optimizer: sam``, the neighbourhood radius (two forward-backward
            passes per step; not with ``16-mixed`` precision).
        scheduler: ``cosine`` decay to ``min_lr_ratio * lr``, ``multistep`` decay by ``gamma``
            at ``milestones``, or ``constant``; all stepped per optimizer step.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        min_lr_ratio: final learning rate of the cosine schedule as a fraction of ``lr``.
        milestones: epochs at which ``multistep`` multiplies the learning rate by ``gamma``.
        gamma: ``multistep`` decay factor.
        mixup: MixUp alpha (timm ``Mixup``); 0 disables.
        cutmix: CutMix alpha; 0 disables. With both on, each batch uses one of them.
        mixup_off_epoch: epoch from which MixUp/CutMix stop (train the last epochs on clean
            images); ``None`` mixes throughout.
        channels_last: run the network in channels-last memory format (faster on GPUs with
            tensor cores).
        tta: test-time augmentation at ``test`` and ``predict`` (validation during fit stays
            single-view): ``flip`` (image and its mirror), ``crops`` (the image and centred
            crops of 95 % and 90 % of its side), or ``flip+crops``; the views' probabilities
            are averaged (the temperature then applies to that average). Do not flip images
            whose side matters (digits, text). The ONNX export stays single-view.
        compile: compile the network with ``torch.compile``; falls back to eager with a warning
            if compilation fails.
    """

    class_weights: torch.Tensor
    model: torch.nn.Module

    def __init__(
        self,
        model_name: str = "resnet50",
        class_names: list[str] | None = None,
        pretrained: bool | str = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: Literal["adamw", "sgd", "sam"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        sam_base: Literal["adamw", "sgd"] = "sgd",
        sam_rho: float = 0.05,
        scheduler: Schedule = "cosine",
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_off_epoch: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        tta: Literal["none", "flip", "crops", "flip+crops"] = "none",
        image_size: int | None = None,
        freeze_backbone_epochs: int = 0,
        train_bn: bool = False,
        backbone_lr_scale: float = 1.0,
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        check_rho(optimizer, sam_rho)
        check_finetuning(freeze_backbone_epochs, backbone_lr_scale, layer_decay)
        if not class_names:
            raise ValueError("class_names is empty: it comes from the data's train/ folders.")
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.model = create_backbone(
            model_name, len(class_names), pretrained, drop_rate, drop_path_rate, image_size
        )
        self.preprocessing: Preprocessing | None = None  # from the data; in checkpoints
        self.register_buffer("class_weights", torch.ones(self.num_classes), persistent=False)
        #: ``softmax(logits / temperature)``, fitted by ``Calibration``; a number, not a buffer.
        self.temperature = 1.0
        self.use_class_weights = False
        #: Accepts or rejects predictions (fitted by ``Calibration``), outside the module tree.
        self.selector: Selector | None = None
        self._runner = Runner()  # runs the network, compiled once ``compile`` asks for it
        self.loss_window = LossWindow()
        self._reported_step = 0
        self.train_unreadable = TrainUnreadable()
        self._sam: SAM | None = None
        self._sam_window = Window()
        self.mixup_fn = mixing(mixup, cutmix, self.num_classes)
        self.train_top1 = summary_metrics(self.num_classes)["top1"]
        self.train_top1.persistent(True)  # in checkpoints: a resumed epoch counts all of it
        self.evaluation = torch.nn.ModuleDict(
            {s: StageMetrics(self.num_classes) for s in ("val", "test")}
        )

    def network_copy(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A copy of the network with the weights of a checkpoint's ``state_dict``."""
        net = copy.deepcopy(self.model)
        net.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        return net

    def stage_metrics(self, stage: EvalStage) -> StageMetrics:
        """Loss, summary metrics, confusion matrix and unreadable count of ``stage``."""
        return cast(StageMetrics, self.evaluation[stage])

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised ``float`` NCHW batch (compiled with ``compile``)."""
        return self._runner(self.model, self._channels(images))

    @override
    def setup(self, stage: str) -> None:
        """Take the preprocessing and the loss weights from the data (:class:`ImageData`)."""
        refuse_half_weights(self.trainer.precision)  # every route: the metrics' counts
        if stage == "fit" and self.hparams["compile"]:
            self._runner.compile(self.model)
        data = optional_image_data(self.trainer)
        if data is None:
            return
        if data.preprocessing is not None:
            self.preprocessing = data.preprocessing
        if stage == "fit":
            weights = data.loss_weights()
            self.use_class_weights = weights is not None
            if weights is not None:
                self.class_weights.copy_(weights)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of hard labels or (floating-point) mixed targets."""
        weight = self.class_weights if self.use_class_weights else None
        smoothing = self.hparams["label_smoothing"]
        if targets.is_floating_point():
            return mixed_cross_entropy(logits, targets, weight, smoothing)
        return cross_entropy(logits, targets, weight, smoothing)

    def _mixing(self, batch_size: int) -> bool:
        off = self.hparams["mixup_off_epoch"]
        on = off is None or self.current_epoch < off
        return self.mixup_fn is not None and on and batch_size % 2 == 0

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Cross-entropy with label smoothing and class weights, of hard or mixed targets
        (normalised alike, see :mod:`classifier.losses`): ``{"loss", "logits", "batch_loss"}``
        (``batch_loss`` as logged: the first pass's, not divided by accumulation), without
        ``logits`` for a mixed batch (its logits belong to no single label). SAM's second
        pass replays the window's inputs and first-pass outputs and logs nothing."""
        if self._sam is not None and self._sam.perturbed and self._sam_window:
            inputs, replayed, first = self._sam_window.replay()
            loss = self._loss(self(inputs), replayed)
            self.loss_window.watch(loss)  # NaN at the perturbed weights stops the run too
            return {**first, "loss": loss}
        images, labels, _ = batch
        targets = labels
        if self._mixing(len(images)):
            images, targets = self.mixup_fn(images, labels)
            loss = self._loss(self(images), targets)
            out = {"loss": loss, "batch_loss": loss.detach()}
        else:
            logits = self(images)
            loss = self._loss(logits, labels)
            self.train_top1.update(logits.detach(), labels)
            self.log("train/top1", self.train_top1, on_step=False, on_epoch=True)
            out = {"loss": loss, "logits": logits.detach(), "batch_loss": loss.detach()}
        if self._sam is not None:  # replayed by SAM's second pass
            self._sam_window.keep(self._sam, images, targets, out)
        self.log("train/loss", loss, on_step=True, on_epoch=True)  # the bar: see below
        self.loss_window.add(loss)  # on device, no sync: read every log interval
        return out

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Every ``log_every_n_steps`` batches, one host read: stop if the loss became NaN/inf,
        and show the interval's mean loss in the progress bar.

        The bar gets a CPU tensor: progress bars read their metrics at every refresh, and a
        device tensor there would stall the device once per step.
        """
        # Lightning's loggers write at the same optimizer steps.
        step = self.trainer.global_step
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 50)))
        if step % every or step == self._reported_step or not self.loss_window.steps:
            return
        self._reported_step = step
        mean, finite = self.loss_window.take()
        self.check_finite(finite)
        self.log("loss", torch.tensor(mean), prog_bar=True, logger=False)

    def check_finite(self, finite: bool | None = None) -> None:
        """Raise :class:`~classifier.losses.NonFiniteLossError` if a loss since the start
        was NaN/inf (``finite``: already read back; ``None``: read it)."""
        if not (self.loss_window.all_finite() if finite is None else finite):
            best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
            raise nonfinite_error(self.trainer.global_step, best)

    def _eval_logits(
        self, images: torch.Tensor, tta: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (with test-time augmentation, :func:`~classifier.transforms.tta_log_probs`)
        and, with a fitted selector, each image's (not its views') feature distance."""
        mode = self.hparams.get("tta", "none")
        distance = None
        if self.selector is not None:
            features, logits = features_and_logits(self.model, self._channels(images))
            distance = self.selector.distance_of(features)
        else:
            logits = self(images)
        if not tta or mode == "none":
            return logits, distance
        return tta_log_probs(self, images, mode), distance

    def _channels(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams["channels_last"]:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _eval_step(self, stage: EvalStage, batch: Batch) -> dict[str, torch.Tensor]:
        images, labels, indices = batch
        logits, distance = self._eval_logits(images, tta=stage == "test")
        if not bool(torch.isfinite(logits).all()):  # one sync a batch; evaluation syncs anyway
            raise NonFiniteLossError(
                f"the network's {stage} outputs are NaN or infinite: its weights overflow (a "
                "damaged checkpoint?); no result is written from them"
            )
        losses = self.stage_metrics(stage).update(logits, labels, self.temperature)
        out = {"logits": logits.detach(), "losses": losses.detach(), "indices": indices}
        if distance is not None:
            out["distance"] = distance
        return out

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Update loss, summary metrics and confusion matrix; return per-image outputs."""
        return self._eval_step("val", batch)

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """As :meth:`validation_step`, for the test split."""
        return self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: EvalStage) -> None:
        metrics = self.stage_metrics(stage)
        if not self.trainer.sanity_checking:
            values = metrics.compute_logged()
            self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
            unreadable = int(metrics.unreadable.compute())  # in metrics.csv, and a warning
            self.log(f"{stage}/unreadable", float(unreadable), sync_dist=False)
            warn_unreadable(stage, unreadable)
        metrics.reset()

    @override
    def on_validation_epoch_end(self) -> None:
        """Log ``val/*`` metrics (skipped in sanity checks)."""
        self._eval_epoch_end("val")

    @override
    def on_test_epoch_end(self) -> None:
        """Log ``test/*`` metrics."""
        self._eval_epoch_end("test")

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Calibrated class probabilities (``softmax(logits / temperature)``) with the dataset
        indices and labels (-1 if unknown)."""
        images, labels, indices = batch
        logits, distance = self._eval_logits(images, tta=True)
        probs = (logits.float() / self.temperature).softmax(dim=1)
        out = {"probs": probs, "labels": labels, "indices": indices}
        if distance is not None and self.selector is not None:
            out["distance"] = distance
            out["accepted"] = self.selector.accepted(probs.max(1).values, distance)
        return out

    @override
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, once per step: with SAM, of the second pass's whole sum (the
        first pass's set only the ascent's direction, which clipping by value would turn)."""
        if self._sam is not None and (not self._sam.perturbed or len(self._sam_window)):
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @override
    def configure_optimizers(self) -> Any:
        """timm's optimizer factory (no decay on norms/biases) and a per-step LR schedule."""
        data = optional_image_data(self.trainer)
        per_epoch = data.train_batches_per_epoch() if data is not None else None
        found = optimization(self.model, self.hparams, *stepping_batches(self.trainer, per_epoch))
        self._sam = found["optimizer"] if isinstance(found["optimizer"], SAM) else None
        if self._sam is not None:
            check_sam_trainer(self.trainer)
        return found

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store class names and preprocessing so the checkpoint describes itself."""
        if self.trainer.training:
            self.check_finite()  # never write NaN weights over a good checkpoint
        checkpoint["class_names"] = self.class_names
        checkpoint["temperature"] = self.temperature
        if self.selector is not None:
            checkpoint["selective"] = self.selector.to_checkpoint()
        if self.preprocessing is not None:
            checkpoint["preprocessing"] = self.preprocessing.to_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the preprocessing saved by :meth:`on_save_checkpoint`; give checkpoints
        from before calibration a temperature of 1 (also on Lightning's own loading route);
        resample position embeddings saved for another input size."""
        source = self._checkpoint_file()
        upgrade(checkpoint, "the checkpoint", source=source)
        if isinstance(checkpoint.get("state_dict"), dict):  # saved at another data.image_size
            self._adapt_size(checkpoint, source or "the checkpoint")
            self._refuse_other_network(checkpoint["state_dict"], source or "the checkpoint")
        self.temperature = float(checkpoint.get("temperature", 1.0))
        self.selector = rule_of(checkpoint, self.model, source or "the checkpoint")
        if "preprocessing" in checkpoint:
            self.preprocessing = Preprocessing.from_dict(checkpoint["preprocessing"])

    def _refuse_other_network(self, state: dict[str, Any], source: str) -> None:
        """Refuse, in one line, weights of another network (another ``model_name`` or class
        count than the config's): Lightning's load would stop with a many-line traceback.

        Raises:
            CheckpointError: a weight's shape differs, or (strict loading) one is missing or
                extra.
        """
        own = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        differ = [k for k in own.keys() & theirs.keys() if own[k] != theirs[k]]
        if self.strict_loading:
            differ += sorted(own.keys() ^ theirs.keys())
        if differ:
            key = sorted(differ)[0]
            raise CheckpointError(
                printable(
                    f"{source} holds weights of another network than this config builds "
                    f"({len(differ)} differ, first {key}: {theirs.get(key, 'missing')} in the "
                    f"checkpoint, {own.get(key, 'none')} here); use the config it was trained "
                    "with (its run folder's config.yaml)."
                )
            )

    def _adapt_size(self, checkpoint: dict[str, Any], source: str) -> None:
        """Resample position embeddings saved for another input size, when this model was
        asked for another size than the checkpoint's (``--data.image_size``), with a note;
        a checkpoint whose weights contradict its own size is refused.

        Raises:
            CheckpointError: the weights were saved for another size than the checkpoint says.
        """
        state = checkpoint["state_dict"]
        before = {k: tuple(v.shape) for k, v in state.items()}
        resample_checkpoint(self.model, state)
        changed = [k for k, v in state.items() if tuple(v.shape) != before[k]]
        if not changed:
            return
        saved = checkpoint.get("hyper_parameters", {}).get("image_size")
        if saved == self.hparams.get("image_size"):
            raise CheckpointError(
                f"{source}: its {changed[0]} has shape {before[changed[0]]}, not what its "
                f"image_size {saved} gives; a damaged checkpoint."
            )
        rank_zero_warn(
            f"trained at {saved} px, evaluated at {self.hparams.get('image_size')} px: "
            f"{', '.join(changed)} resampled"
        )

    def _checkpoint_file(self) -> str | None:
        """The file the trainer restores from (``None``: no trainer, or none given)."""
        try:
            path = self.trainer.ckpt_path
        except RuntimeError:
            return None
        return str(path) if path is not None else None

    @override
    def on_train_epoch_end(self) -> None:
        """Log the epoch's unreadable training images (``train/unreadable``)."""
        data = optional_image_data(self.trainer)
        self.train_unreadable.log(self, data.new_failures("train") if data is not None else 0)

    @override
    def on_train_epoch_start(self) -> None:
        """Warn about the previous epoch's unreadable training images."""
        self._sam_window.clear()  # a window an interruption left unstepped
        self.train_unreadable.warn(self.trainer.callback_metrics)

    @override
    def on_train_end(self) -> None:
        """Warn about the last epoch's unreadable training images."""
        self.train_unreadable.warn(self.trainer.callback_metrics)
