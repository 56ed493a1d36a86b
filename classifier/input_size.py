"""The input size a timm backbone runs at: created for the training size, checked before any
download, and position embeddings of weights saved at another size resampled."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from classifier.errors import UserError


class BackboneError(UserError, ValueError):
    """The backbone cannot be created; the message says what to change."""


def native_size(name: str) -> tuple[int, bool]:
    """The side timm's pretrained config gives model ``name`` and whether the model is built
    for that size only (ViT, Swin, ...: ``fixed_input_size``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return 224, False
    return int(cfg.input_size[-1]), bool(getattr(cfg, "fixed_input_size", False))


def size_arguments(name: str, image_size: int | None) -> dict[str, Any]:
    """timm's ``img_size`` for a model built for one input size (``{}`` otherwise): it sizes
    the position embeddings (and Swin's attention masks) for the training images."""
    if image_size is None:
        return {}
    _, fixed = native_size(name)
    return {"img_size": image_size} if fixed else {}


def check_size(name: str, image_size: int, kwargs: dict[str, Any]) -> None:
    """Refuse, in one line naming the sizes that work, an ``image_size`` that model ``name``
    cannot run at, or that its patches do not tile (pixels would be dropped). The check runs on
    a weightless copy (PyTorch's ``meta`` device): it costs no compute and no download.

    Raises:
        BackboneError: the size does not work for the model.
    """
    import timm

    native, _ = native_size(name)
    where = f"{name} at data.image_size {image_size}"
    try:
        with torch.device("meta"):
            probe: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError:  # a fixed-size model without timm's ``img_size`` argument
        raise BackboneError(
            f"{where}: this model runs only at its native size; set data.image_size {native}"
        ) from None
    patch = _patch_size(probe)
    if patch > 1 and image_size % patch:
        low = max(patch, image_size // patch * patch)
        raise BackboneError(
            f"{where}: the side must be a multiple of its patch size {patch} "
            f"(e.g. {low} or {low + patch}; native {native})"
        )
    try:
        with torch.no_grad():
            probe.eval()(torch.zeros(1, 3, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError, AssertionError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        smallest = max(patch, _reduction(probe))
        raise BackboneError(
            f"{where}: the model cannot run at this size ({first}); use at least "
            f"{smallest} px, best a multiple of {smallest} (native {native})"
        ) from None


def _patch_size(model: nn.Module) -> int:
    """The side of a patch-embedding model's patches (1 for convolutional networks)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(patch, tuple | list):
        return int(patch[0])
    return int(patch) if isinstance(patch, int) else 1


def _reduction(model: nn.Module) -> int:
    """The model's total stride (timm's ``feature_info``; 32 when it has none)."""
    info = getattr(model, "feature_info", None)
    try:
        return int(info[-1]["reduction"])  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        return 32


def resample_for(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the tensors saved for another input size (a ViT's ``pos_embed``, Swin's
    tables) adapted to ``model`` by the checkpoint filter of the model's timm module, the one
    timm applies to hub weights; tensors it does not adapt are left as they are."""
    own = model.state_dict()
    mismatched = {k for k, v in state.items() if k in own and own[k].shape != v.shape}
    adapt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if not mismatched or adapt is None:
        return state
    try:
        adapted = adapt(dict(state), model)
    except Exception:  # a filter written for another layout: the tensors stay as they are
        return state
    out = dict(state)
    for key in mismatched:
        value = adapted.get(key) if isinstance(adapted, dict) else None
        if isinstance(value, torch.Tensor) and value.shape == own[key].shape:
            out[key] = value
    return out


def resample_checkpoint(model: nn.Module, state: dict[str, Any], prefix: str = "model.") -> None:
    """Adapt, in place, the tensors of ``model`` in a checkpoint's ``state`` (under
    ``prefix``) that were saved for another input size (:func:`resample_for`): a ViT trained
    at 224 px evaluates at ``--data.image_size 256``."""
    inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    for key, value in resample_for(model, inner).items():
        if value is not inner[key]:
            state[prefix + key] = value
