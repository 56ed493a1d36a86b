"""Creating a timm backbone: by name, with hub weights or a local weights file.

The input size a timm backbone runs at: created for the training size, checked before any
download, and position embeddings of weights saved at another size resampled.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from pathlib import Path
from typing import Any, cast

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


__all__ = ["BackboneError", "Runner", "check_model_name", "create_backbone", "read_weights"]


def check_model_name(name: str) -> None:
    """Raise :class:`BackboneError` with close timm names if ``name`` is not a timm model."""
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise BackboneError(
        f'unknown timm model {name!r}.{hint} `python -c "import timm; '
        f"print(timm.list_models('*{name[:6]}*'))\"` lists more."
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, never running code.

    Nested ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped and a leading
    ``module.`` or ``model.`` prefix is removed.
    """
    if not path.is_file():
        raise BackboneError(f"pretrained weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except Exception as error:  # safetensors' own error type for a malformed file
            raise BackboneError(f"cannot read weights from {path}: {error}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise BackboneError(f"cannot read weights from {path}: {first}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"{path} holds no state dict.")
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def load_local_weights(model: nn.Module, path: Path) -> list[str]:
    """Load matching tensors from ``path`` into ``model``; the new head stays random.

    Position embeddings saved for another input size are resampled to the model's (see
    :func:`~classifier.backbone.resample_for`).

    Returns:
        Names of the model's tensors that were not loaded (the classifier head, normally).
    """
    own = model.state_dict()
    state = resample_for(model, read_weights(path))
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise BackboneError(f"no tensor in {path} matches the model's names and shapes.")
    head = _head_names(model)
    lacking = [n for n, _ in model.named_parameters() if n not in usable and n not in head]
    if lacking:  # a learned tensor left random under a "pretrained" backbone: say so, stop
        found, wanted = state.get(lacking[0]), tuple(own[lacking[0]].shape)
        detail = "not in the file"
        if found is not None:
            detail = f"shape {tuple(found.shape)} in the file, {wanted} in the model"
        raise BackboneError(
            f"{path} does not hold {len(lacking)} of the backbone's learned tensors "
            f"({lacking[0]}: {detail}); a file of another model, or a damaged one."
        )
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def classifier_head(net: nn.Module) -> nn.Module | None:
    """The network's classifier head (timm's ``get_classifier()``), or ``None``."""
    get = getattr(net, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def _head_names(model: nn.Module) -> set[str]:
    """The names of the classifier head's parameters (a new head is random by design)."""
    head = classifier_head(model)
    ids = {id(p) for p in head.parameters()} if head is not None else set()
    return {name for name, p in model.named_parameters() if id(p) in ids}


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool | str,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    image_size: int | None = None,
) -> nn.Module:
    """Create timm model ``name`` with a ``num_classes`` head, for ``image_size`` inputs.

    Args:
        name: a timm model name (``timm.list_models()``).
        num_classes: outputs of the new classifier head.
        pretrained: ``True`` downloads the timm hub weights, a path loads a local
            ``.safetensors``/``.pth`` file, ``False`` starts from random weights.
        drop_rate: dropout before the classifier head.
        drop_path_rate: stochastic depth rate.
        image_size: the side of the square inputs; a model with a fixed input size (ViT,
            Swin, ...) is created for it, its hub weights' position embeddings resampled by
            timm. ``None``: the model's own size.
    """
    import timm

    check_model_name(name)
    kwargs: dict[str, Any] = {"drop_rate": drop_rate, **size_arguments(name, image_size)}
    if image_size is not None:
        check_size(name, image_size, kwargs)  # before any download
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if isinstance(pretrained, str):
        model: nn.Module = timm.create_model(
            name, pretrained=False, num_classes=num_classes, **kwargs
        )
        missing = load_local_weights(model, Path(pretrained).expanduser())
        buffers = [n for n in missing if not n.endswith("num_batches_tracked")]
        buffers = [n for n in buffers if n not in dict(model.named_parameters())]
        if buffers:  # statistics such as BatchNorm's running means: a warning, not an error
            import warnings

            warnings.warn(
                f"{len(buffers)} buffer(s) were not in {pretrained} and keep their initial "
                f"values: {', '.join(buffers[:4])}{' ...' if len(buffers) > 4 else ''}",
                stacklevel=2,
            )
        return model
    try:
        created: nn.Module = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, **kwargs
        )
        return created
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise BackboneError(
            f"could not download pretrained weights for {name!r} ({error}). Without internet, "
            "pass a local file: --model.pretrained /path/to/weights.safetensors, or "
            "--model.pretrained false."
        ) from error


class Runner:
    """Calls the network, compiled with ``torch.compile`` after :meth:`compile`.

    Compilation is lazy: it happens at the first call, and that is where an unsupported
    platform or model fails. The first call is therefore guarded: on failure the network runs
    eagerly from then on, with a warning. The compiled wrapper is held here, outside the module
    tree, so state-dict keys do not change.
    """

    def __init__(self) -> None:
        self._compiled: list[Any] = []  # a list: not registered as a submodule
        self._verified = False

    def compile(self, net: nn.Module) -> None:
        """Compile ``net`` for the next calls (once)."""
        if self._compiled:
            return
        try:
            self._compiled.append(torch.compile(net))
        except Exception as error:  # compilation support varies by platform and model
            warnings.warn(f"torch.compile failed ({error!r}); running eagerly", stacklevel=2)
        self._verified = False

    def __call__(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``net(images)``, compiled when asked and working."""
        if not self._compiled:
            return cast(torch.Tensor, net(images))
        try:
            logits = cast(torch.Tensor, self._compiled[0](images))
        except Exception as error:  # the first call compiles: its failure is a warning
            if self._verified:
                raise
            self._compiled.clear()
            warnings.warn(f"torch.compile failed ({error!r}); running eagerly", stacklevel=2)
            return cast(torch.Tensor, net(images))
        self._verified = True
        return logits
