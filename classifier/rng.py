"""Saving and restoring every random number generator, for bitwise-exact resume.

Lightning does not checkpoint RNG states; dropout, drop-path and MixUp draw from them in the
training process, so a resumed run diverges unless they are restored. States are stored as
tensors and plain tuples so checkpoints still load with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The current states of Python's, NumPy's, torch's CPU and CUDA generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (
            str(kind),
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture`."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def states_problem(states: object) -> str | None:
    """Why ``states`` cannot be restored (``None``: they can), found by restoring them and
    putting the current states back, so a damaged checkpoint is refused when it is loaded, not
    when training is about to continue."""
    if not isinstance(states, dict):
        return "its random generator states are not a mapping"
    current = capture()
    try:
        restore(states)
    except Exception as error:  # whatever the generators refuse
        return f"its random generator states cannot be restored ({type(error).__name__})"
    finally:
        restore(current)
    return None
