"""The columns of ``predictions.csv``, the same for ``classifier predict`` and
``classifier-predict`` (torch-free)."""

from __future__ import annotations


def columns(k: int, has_truth: bool) -> list[str]:
    """``path``, ``predicted``, ``confidence`` (calibrated), ``accepted`` (``true``/``false``;
    empty without an accept/reject rule), ``true`` (when images sit in class folders), the
    ``k`` most likely classes with their probabilities, and ``error`` (``unreadable``)."""
    names = ["path", "predicted", "confidence", "accepted"] + (["true"] if has_truth else [])
    for i in range(1, k + 1):
        names += [f"top{i}_class", f"top{i}_prob"]
    return [*names, "error"]


#: The error column of an image whose outputs hold NaN or infinity (never written as numbers).
NON_FINITE = "non-finite output"
