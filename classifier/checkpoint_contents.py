"""What classifier reads from a loaded checkpoint, checked, and what it never takes from one.

A checkpoint may come from someone else. After ``torch.load(weights_only=True)`` (no code
runs), its contents could still be hostile data: hyper-parameters that are not mappings, class
names that are not strings, image sizes that exhaust memory, NaN weights that give impossible
metrics, or callback states whose paths make Lightning's ``ModelCheckpoint`` delete or rewrite
files anywhere when a run resumes. :func:`problem` finds the first; :func:`forget_checkpoint_paths`
drops the paths.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

#: ``ModelCheckpoint`` state entries that name files: on resume Lightning would remove (even
#: recursively) or rewrite what they name, wherever that is.
_PATH_KEYS = ("best_model_path", "last_model_path", "kth_best_model_path")


def forget_checkpoint_paths(checkpoint: dict[str, Any], folder: str | None = None) -> None:
    """In every ``ModelCheckpoint`` state of ``checkpoint``, blank each file path that is not a
    ``.ckpt`` file in ``folder`` (the folder the checkpoint was read from, links resolved;
    ``None``: blank them all), the same in the top-k table, and the folder unless it is that
    one: Lightning removes and rewrites what these name. A checkpoint read from elsewhere
    leaves a resumed run tracking its checkpoints in its own folder."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return
    for state in callbacks.values():
        if isinstance(state, dict) and any(k in state for k in (*_PATH_KEYS, "best_k_models")):
            for key in _PATH_KEYS:
                if key in state and not _beside(state[key], folder):
                    state[key] = ""
            table = state.get("best_k_models")
            if table is not None:
                kept = table.items() if isinstance(table, dict) else ()
                state["best_k_models"] = {k: v for k, v in kept if _beside(k, folder)}
            if not _same_folder(state.get("dirpath"), folder):
                state["dirpath"] = ""


def _beside(path: object, folder: str | None) -> bool:
    if folder is None or not isinstance(path, str) or not path.endswith(".ckpt"):
        return False
    return os.path.dirname(os.path.realpath(path)) == folder


def _same_folder(path: object, folder: str | None) -> bool:
    return folder is not None and isinstance(path, str) and os.path.realpath(path) == folder


def _finite_weights(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


#: The largest image side a checkpoint's preprocessing may name.
MAX_SIDE = 8192


def problem(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with the parts of ``checkpoint`` classifier reads (``None``: nothing)."""
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        return "its state_dict is not a mapping of names to tensors"
    if not _finite_weights(weights):
        return "its weights hold NaN or infinite values"
    legacy = weights.get("temperature")
    if legacy is not None and (legacy.numel() != 1 or not 0 < float(legacy) < math.inf):
        return "its temperature is not a positive number"
    data = checkpoint.get("datamodule_hyper_parameters", {})
    if isinstance(data, dict) and not _side_ok(data.get("image_size", 1)):
        return f"its data image_size is not a whole number of 1 to {MAX_SIDE} pixels"
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        section = checkpoint.get(key, {})
        if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
            return f"its {key} are not a mapping of argument names"
    names = checkpoint.get("class_names", checkpoint.get("hyper_parameters", {}).get("class_names"))
    if names is not None and not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names)
    ):
        return "its class names are not a list of distinct strings"
    temperature = checkpoint.get("temperature", 1.0)
    if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
        temperature = float(temperature)
    if not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        return "its temperature is not a positive number"
    selective = checkpoint.get("selective")
    if selective is not None and _selective_problem(selective):
        return "its selective-classification statistics are malformed"
    pre = checkpoint.get("preprocessing")
    if pre is not None:
        return _preprocessing_problem(pre)
    return None


def _selective_problem(stored: object) -> bool:
    """Whether ``stored`` is not what ``Selector.to_checkpoint`` writes."""
    if not isinstance(stored, dict):
        return True
    means, precision = stored.get("means"), stored.get("precision")
    keys = ("confidence_threshold", "distance_threshold", "target_accuracy", "coverage")
    numbers = [stored.get(k) for k in keys]
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in numbers
    ):
        return True
    return not (
        isinstance(means, torch.Tensor)
        and isinstance(precision, torch.Tensor)
        and means.ndim == 2
        and precision.shape == (means.shape[1], means.shape[1])
        and bool(torch.isfinite(means).all() and torch.isfinite(precision).all())
    )


def _side_ok(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIDE


def _preprocessing_problem(pre: object) -> str | None:
    if not isinstance(pre, dict):
        return "its preprocessing is not a mapping"
    sizes = [pre.get("image_size"), pre.get("resize_size")]
    if not all(_side_ok(v) for v in sizes):
        return f"its image_size and resize_size are not whole numbers of 1 to {MAX_SIDE} pixels"
    if pre.get("interpolation") not in ("bilinear", "bicubic", "nearest"):
        return "its interpolation is not bilinear, bicubic or nearest"
    for key in ("mean", "std"):
        value = pre.get(key)
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        ):
            return f"its {key} is not three finite numbers"
    if min(pre["std"]) <= 0:
        return "its std is not positive"
    return None
