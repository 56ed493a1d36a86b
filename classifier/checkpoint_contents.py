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

from classifier.checked_values import (
    class_names_problem,
    preprocessing_problem,
    rule_problem,
    seed_problem,
    side_problem,
    statistics_problem,
    temperature_problem,
)

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


def problem(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with the parts of ``checkpoint`` classifier reads (``None``: nothing)."""
    weights = checkpoint.get("state_dict")
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        return "its state_dict is not a mapping of names to tensors"
    if not _finite_leaves(weights):
        return "its weights hold NaN or infinite values, or non-dense tensors"
    legacy = weights.get("temperature")
    if legacy is not None:
        found = temperature_problem(float(legacy) if legacy.numel() == 1 else None)
        if found:
            return found
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        section = checkpoint.get(key, {})
        if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
            return f"its {key} are not a mapping of argument names"
    data = checkpoint.get("datamodule_hyper_parameters", {})
    found = side_problem(data.get("image_size", 1), "data image_size")
    if found:
        return found
    names = checkpoint.get("class_names", checkpoint.get("hyper_parameters", {}).get("class_names"))
    found = None if names is None else class_names_problem(names)
    if found:
        return found
    temperature = checkpoint.get("temperature", 1.0)
    if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
        temperature = float(temperature)
    found = temperature_problem(temperature)
    if found:
        return found
    selective = checkpoint.get("selective")
    if selective is not None:
        found = _selective_problem(selective, len(names) if isinstance(names, list) else None)
        if found:
            return f"its accept/reject rule is malformed: {found}"
    pre = checkpoint.get("preprocessing")
    found = None if pre is None else preprocessing_problem(pre)
    trained = data.get("image_size")
    # The preprocessing is made from the data's image size: another one is no training's.
    if not found and isinstance(pre, dict) and trained not in (None, pre["image_size"]):
        found = f"its preprocessing image_size {pre['image_size']} is not its data's {trained}"
    return found or _training_state_problem(checkpoint)


def _training_state_problem(checkpoint: dict[str, Any]) -> str | None:
    """What a resumed ``fit`` would take from ``checkpoint`` and cannot use: the data seed,
    the random generators' states, NaN or infinity in the optimizer's state or the schedule."""
    from classifier import rng

    data = checkpoint.get("datamodule_hyper_parameters", {})
    state = checkpoint.get("ImageFolderDataModule")
    state = state if isinstance(state, dict) else {}
    for value in (data.get("seed"), state.get("seed")):
        found = seed_problem(value)
        if found:
            return found
    for states in (state.get("rng_states"), checkpoint.get("rng_states")):
        found = None if states is None else rng.states_problem(states)
        if found:
            return found
    if not _finite_leaves(checkpoint.get("optimizer_states", [])):
        return "its optimizer state holds NaN, infinite or non-dense values"
    if not _finite_leaves(checkpoint.get("lr_schedulers", [])):
        return "its learning-rate schedule holds NaN or infinite values"
    return None


def _finite_leaves(tree: object) -> bool:
    """Whether every number and floating-point tensor in ``tree`` is finite (and dense)."""
    if isinstance(tree, torch.Tensor):
        if tree.layout != torch.strided:
            return False
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, float):
        return math.isfinite(tree)
    if isinstance(tree, dict):
        return all(_finite_leaves(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_finite_leaves(v) for v in tree)
    return True


def _selective_problem(stored: object, classes: int | None) -> str | None:
    """What is wrong with ``stored``, as ``Selector.to_checkpoint`` writes it for ``classes``
    classes (``None``: unknown). Its width is checked against the network where the rule is
    attached to one (:func:`~classifier.checkpoint.rule_of`)."""
    if not isinstance(stored, dict):
        return "it is not a mapping"
    found = rule_problem(stored)
    if found:
        return found
    means, precision = stored.get("means"), stored.get("precision")
    if not (_dense_floats(means) and _dense_floats(precision)):
        return "its means and precision are not dense real tensors"
    assert isinstance(means, torch.Tensor) and isinstance(precision, torch.Tensor)
    rows = means.shape[0] if classes is None and means.ndim else classes
    found = statistics_problem(means.shape, precision.shape, rows or 0)
    if found:
        return found
    if not bool(torch.isfinite(means).all() and torch.isfinite(precision).all()):
        return "its means or precision hold NaN or infinite values"
    # The distance of a few class means to the nearest mean (0): finite, or every distance
    # overflows and every prediction is rejected (a precision of 3e38 did that).
    from classifier.selective import Distance

    if not bool(torch.isfinite(Distance(means, precision)(means[:8])).all()):
        return "its distances overflow (means or precision too large)"
    return None


def _dense_floats(value: object) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.is_floating_point()
    )
