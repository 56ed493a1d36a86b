"""Grad-CAM: where in the image the network looked for a class.

A small own implementation rather than the ``grad-cam`` package: it needs one forward and one
backward pass through a timm model at a layer chosen from timm's uniform structure, which is a
few lines, and keeps a dependency (with its OpenCV requirement) out of the install. For CNNs the
layer is the deepest stage in timm's ``feature_info`` that still has a few cells a side at the
input size (the last stage for 224-pixel images; an earlier one for small images, whose last
map is 1x1); for ViT-style models it is
the input of the last block's attention (``blocks[-1].norm1``), where patch tokens still carry
the gradient of a class-token head; tokens are reshaped to their grid, as pytorch-grad-cam's
``reshape_transform`` does.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from typing_extensions import override

from classifier.callback_contract import classifier_module, image_data
from classifier.figures import PLOT_TIME_SHARE, PlottingCallback, log_image, save_png
from classifier.file_io import run_dir
from classifier.metrics import hardness


def _token_layer(net: nn.Module) -> nn.Module | None:
    """``blocks[-1].norm1`` of a ViT-style timm model (ViT, DeiT, BEiT, EVA...), else ``None``."""
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        norm = getattr(blocks[-1], "norm1", None)
        if isinstance(norm, nn.Module):
            return norm
    return None


def _to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """Tokens ``(N, T, C)`` as a feature map ``(N, C, h, w)``: the last ``h * w`` tokens are
    the patches (the largest square count; class and register tokens come first)."""
    side = math.isqrt(tensor.shape[1])
    while side > 0 and tensor.shape[1] - side * side > 16:  # at most 16 prefix tokens
        side -= 1
    if side == 0:
        raise ValueError(f"{tensor.shape[1]} tokens do not hold a square grid of patches")
    tokens = tensor[:, tensor.shape[1] - side * side :]
    return tokens.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


def _as_nchw(tensor: torch.Tensor, net: nn.Module) -> torch.Tensor:
    """A 4-D activation as NCHW (Swin and other timm models may give NHWC, ``output_fmt``)."""
    if tensor.ndim == 4 and str(getattr(net, "output_fmt", "NCHW")) == "NHWC":
        return tensor.permute(0, 3, 1, 2)
    return tensor


#: The smallest side, in cells, of the feature map a map is taken from (a 1x1 map, as a
#: 32-pixel input leaves at the last stage of a ResNet, shows nothing).
MIN_CELLS = 4


def _map_layer(net: nn.Module, side: int) -> nn.Module | None:
    """The deepest stage of a CNN (timm's ``feature_info``) whose output keeps at least
    :data:`MIN_CELLS` cells a side for an input of ``side`` pixels; ``None`` if unknown."""
    info = getattr(net, "feature_info", None)
    if not isinstance(info, list) or not info:
        return None
    fitting = [e for e in info if side // int(e.get("reduction", 1)) >= MIN_CELLS] or info[:1]
    try:
        return net.get_submodule(str(fitting[-1]["module"]))
    except AttributeError:
        return None


def grad_cam(net: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] of ``classes`` for a normalised batch.

    Args:
        net: a timm model, in eval mode.
        images: normalised ``float`` NCHW batch.
        classes: the class to explain for each image.
    """
    tokens = _token_layer(net)
    layer = tokens if tokens is not None else _map_layer(net, min(images.shape[-2:]))
    captured: dict[str, torch.Tensor] = {}
    # Lightning tests under inference mode, which enable_grad alone does not lift.
    with torch.inference_mode(False), torch.enable_grad():
        images, classes = images.clone(), classes.clone()
        if layer is not None:
            hook = layer.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
            try:
                logits = net.forward(images)  # uncompiled: autograd must see the activation
            finally:
                hook.remove()
            activation = captured["a"]
        else:
            activation = net.forward_features(images)  # type: ignore[operator]
            logits = net.forward_head(activation)  # type: ignore[operator]
        score = logits.gather(1, classes.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(score, activation)
    if activation.ndim == 3:
        activation, gradient = _to_grid(activation), _to_grid(gradient)
    else:
        activation, gradient = _as_nchw(activation, net), _as_nchw(gradient, net)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (cam / peak).clamp(0, 1)


class GradCam(PlottingCallback):
    """Grad-CAM of the hardest validation (and test) images, predicted and true class side by
    side.

    Picks the misclassified images first, then the highest losses, from the last validation
    epoch (and from ``test``), and writes ``gradcam_val.png`` at the end of fit and
    ``gradcam_test.png`` after test: each row shows the image, the map of the predicted class
    and the map of the true class.

    Args:
        num_images: rows in each grid.
        plot_time_share: see :class:`~classifier.figures.PlottingCallback`.
    """

    def __init__(self, num_images: int = 8, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        super().__init__(plot_time_share)
        self.num_images = num_images
        self._hardest: list[torch.Tensor] = []

    def _collect(self, outputs: Any, batch: Any) -> None:
        """Keep the batch's hardest images, on the device (no host read per batch)."""
        labels = batch[1]
        predicted = outputs["logits"].argmax(1)
        score = hardness(outputs["losses"], predicted, labels)
        top = score.topk(min(self.num_images, len(score))).indices
        columns = (score, outputs["indices"], predicted, labels)
        self._hardest.append(torch.stack([c[top].double() for c in columns], dim=1))

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a new selection."""
        self._hardest = []

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep this batch's hardest images (a few numbers each)."""
        if not trainer.sanity_checking:
            self._collect(outputs, batch)

    on_test_epoch_start = on_validation_epoch_start

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep this batch's hardest images."""
        self._collect(outputs, batch)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the validation grid (with the final weights)."""
        self._explain_or_warn(trainer, pl_module, "val")
        super().on_fit_end(trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the test grid."""
        self._explain_or_warn(trainer, pl_module, "test")

    def _explain_or_warn(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> None:
        """A model Grad-CAM cannot read is a warning, never a lost export or test."""
        try:
            self._explain(trainer, pl_module, stage)
        except Exception as error:  # architectures vary more than any rule for them
            warnings.warn(f"no Grad-CAM for {stage} ({error!r})", stacklevel=2)

    def _explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from classifier.dist import gather_objects

        local = [rows.cpu() for rows in self._hardest]
        parts = [p for rank in gather_objects(local) for p in rank]
        self._hardest = []
        if not trainer.is_global_zero or not parts or trainer.interrupted:
            return
        rows = torch.cat(parts)
        rows = rows[rows[:, 0] > -torch.inf]
        rows = rows[rows[:, 0].argsort(descending=True)][: self.num_images]
        if not len(rows):
            return
        model = classifier_module(pl_module)
        assert model.preprocessing is not None
        data = image_data(trainer)
        pictures = torch.stack([data.eval_image(stage, int(i)) for i in rows[:, 1]])
        mean, std = model.preprocessing.mean_std(model.device)
        images = (pictures.to(model.device).float() / 255 - mean) / std
        predicted, true = rows[:, 2].long(), rows[:, 3].long()
        net = model.model
        was_training = net.training
        net.eval()
        maps = [grad_cam(net, images, c.to(model.device)).cpu() for c in (predicted, true)]
        net.train(was_training)
        names = [
            (model.class_names[int(p)], model.class_names[int(t)])
            for p, t in zip(predicted, true, strict=True)
        ]
        folder, step = run_dir(trainer), trainer.global_step

        def draw() -> None:
            grid = _grid(pictures, maps[0], maps[1], names, stage)
            path = save_png(grid, folder / f"gradcam_{stage}.png")
            log_image(trainer, f"{stage}/gradcam", path, step)

        self.draws.request(trainer, f"gradcam_{stage}", draw)


def _grid(
    pictures: torch.Tensor,
    predicted: torch.Tensor,
    true: torch.Tensor,
    names: list[tuple[str, str]],
    stage: str,
) -> Any:
    """Rows of three panels: the picture, and the maps of the predicted and the true class."""
    from classifier.figures import as_uint8, heat_overlay, picture_grid

    panels, captions = [], []
    for row in range(len(pictures)):
        picture = as_uint8(pictures[row])
        predicted_name, true_name = names[row]
        panels += [
            picture,
            heat_overlay(picture, predicted[row].numpy()),
            heat_overlay(picture, true[row].numpy()),
        ]
        captions += [
            f"predicted {predicted_name}\ntrue {true_name}",
            f"map: {predicted_name}",
            f"map: {true_name}",
        ]
    title = f"{stage}: hardest images, Grad-CAM of predicted / true class"
    return picture_grid(panels, captions, ["black"] * len(panels), title, cols=3)
