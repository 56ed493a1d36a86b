"""Reading what a checkpoint says about itself, safely.

``classifier test|validate|predict --ckpt_path X`` needs no ``--config``: the model and data
arguments stored in the checkpoint become the first config layer, under any ``--config`` and
command-line overrides the user gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from classifier.safety import refuse_foreign_class_paths


class CheckpointError(ValueError):
    """The checkpoint cannot be used; the message says why."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and an error a user can act on."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot load checkpoint {path}: {str(error).splitlines()[0]} "
            "(truncated file, or not a classifier checkpoint; untrusted pickles are refused)."
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint.")
    return checkpoint


def config_from_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``data`` config sections of the checkpoint at ``path``."""
    return checkpoint_config(load_checkpoint(path), path)


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``data`` config sections a loaded checkpoint was trained with.

    The weights come from the checkpoint, so ``pretrained`` is turned off; the class order is
    pinned to the checkpoint's.
    """
    model = dict(checkpoint.get("hyper_parameters", {}))
    data = dict(checkpoint.get("datamodule_hyper_parameters", {}))
    refuse_foreign_class_paths(model, f"checkpoint {path} (model hyper-parameters)")
    refuse_foreign_class_paths(data, f"checkpoint {path} (data hyper-parameters)")
    class_names = checkpoint.get("class_names") or model.get("class_names")
    if not class_names:
        raise CheckpointError(f"{path} stores no class names; was it trained by classifier?")
    for section in (model, data):
        for key in ("class_names", "_instantiator", "_class_path"):
            section.pop(key, None)
    model["pretrained"] = False
    data["class_names"] = list(class_names)
    return {"model": model, "data": data}
