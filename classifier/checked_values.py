"""The numbers classifier reads from files someone else may have written, and what each must be.

A checkpoint, an ONNX file's metadata and a config all carry numbers that decide results: the
preprocessing, the class names, the temperature, the accept/reject rule. Each kind is checked
here, once, by every route that reads it (:mod:`classifier.checkpoint` for checkpoints,
:mod:`classifier.onnx_predict` for ONNX metadata, the callbacks' constructors for configs), so a
value that would give NaN or silently wrong probabilities is refused where it enters.

Each function returns what is wrong (``None``: nothing), phrased to follow "its". This module
imports neither torch nor NumPy: ``classifier-predict`` runs without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The largest image side a checkpoint, an export or a config may name.
MAX_SIDE = 8192
#: The smallest training size (an antialiased resize to 1 px fails inside torch).
MIN_IMAGE_SIZE = 8
#: Bounds of a temperature: what the fit allows (a validation set without errors would drive
#: it to 0), and what a loaded one may be (outside them probabilities are all but one-hot, or
#: uniform; 1e-300 gave NaN).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 1 / MIN_TEMPERATURE
#: The accept/reject rule's confidence threshold may sit just above 1 ("accept nothing").
_ABOVE_ONE = math.nextafter(1.0, 2.0)


#: Bounds of a normalisation: RGB values are scaled to [0, 1] first, so a mean or a standard
#: deviation outside these is no normalisation (a standard deviation of 1e-45 divides to inf).
MAX_ABS_MEAN = 1e3
STD_RANGE = (1e-3, 1e3)


def number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool; ``10**400`` is not finite)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def side_problem(value: object, name: str = "image side") -> str | None:
    """A pixel count for one image side: a whole number of 1 to :data:`MAX_SIDE`."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIDE:
        return None
    return f"its {name} is not a whole number of 1 to {MAX_SIDE} pixels"


def temperature_problem(value: object) -> str | None:
    """A temperature: a number in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``."""
    if number(value) and MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:  # type: ignore[operator]
        return None
    shown = _shown(value)
    return f"its temperature {shown} is not a number from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}"


def class_names_problem(names: object) -> str | None:
    """Class names: a non-empty list of distinct strings."""
    if (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names)
    ):
        return None
    return "its class names are not a list of distinct strings"


def preprocessing_problem(pre: object, normalised_outside: bool = True) -> str | None:
    """The evaluation preprocessing: sizes, interpolation, and (when the input is normalised
    outside the network) three finite means and three positive finite standard deviations."""
    if not isinstance(pre, dict):
        return "its preprocessing is not a mapping"
    for key in ("image_size", "resize_size"):
        found = side_problem(pre.get(key), key)
        if found:
            return found
    if pre.get("interpolation") not in ("bilinear", "bicubic", "nearest"):
        return "its interpolation is not bilinear, bicubic or nearest"
    if not normalised_outside:
        return None
    for key in ("mean", "std"):
        value = pre.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(map(number, value))):
            return f"its {key} is not three finite numbers"
    if max(abs(v) for v in pre["mean"]) > MAX_ABS_MEAN:
        return f"its mean is not from -{MAX_ABS_MEAN:g} to {MAX_ABS_MEAN:g}"
    if not all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in pre["std"]):
        return f"its std is not from {STD_RANGE[0]:g} to {STD_RANGE[1]:g}"
    return None


#: The accept/reject rule's numbers and their ranges: a confidence threshold from 0 to 1 (or
#: just above: accept nothing), a distance threshold of 0 or more, a target accuracy above 0
#: and at most 1, a coverage from 0 to 1. Any other value rejects or accepts everything.
RULE_RANGES = {
    "confidence_threshold": (0.0, _ABOVE_ONE),
    "distance_threshold": (0.0, math.inf),
    "target_accuracy": (math.ulp(0.0), 1.0),
    "coverage": (0.0, 1.0),
}


def rule_value_problem(key: str, value: object) -> str | None:
    """One of the accept/reject rule's numbers (:data:`RULE_RANGES`)."""
    low, high = RULE_RANGES[key]
    if number(value) and low <= value <= high:  # type: ignore[operator]
        return None
    return f"its {key} {_shown(value)} is not a number from {low:g} to {high:g}"


def rule_problem(numbers: dict[str, object]) -> str | None:
    """Every number of the accept/reject rule (:func:`rule_value_problem`)."""
    for key in RULE_RANGES:
        found = rule_value_problem(key, numbers.get(key))
        if found:
            return found
    return None


def statistics_problem(means: Sequence[int], precision: Sequence[int], classes: int) -> str | None:
    """The accept/reject rule's class means (one row per class) and precision matrix (square,
    as wide as the means), given as shapes."""
    if len(means) != 2 or means[0] != classes:
        return f"its class means have shape {tuple(means)}, not a row for each of {classes} classes"
    if tuple(precision) != (means[1], means[1]):
        return f"its precision matrix has shape {tuple(precision)}, not {(means[1], means[1])}"
    return None


def seed_problem(value: object, name: str = "data seed") -> str | None:
    """A seed: ``None`` or a whole number from 0 to 2**63 - 1."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if value is None or (whole and 0 <= value < 2**63):  # type: ignore[operator]
        return None
    return f"its {name} is not a whole number from 0 to 2**63 - 1"


def _shown(value: object) -> str:
    """``repr(value)``, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
