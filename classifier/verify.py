"""Checking an exported ONNX file against the PyTorch model on real images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.errors import UserError
from classifier.tensor_decode import load_rgb
from classifier.transforms import Preprocessing, eval_transform, normalize


def readable(
    paths: Sequence[Path], labels: Sequence[int] | np.ndarray, transform: Any
) -> Iterator[tuple[torch.Tensor, int]]:
    """The evaluation-ready image and label of each file that can be read."""
    for path, label in zip(paths, labels, strict=True):
        try:
            image = load_rgb(path)
        except MemoryError:
            raise
        except Exception:  # noqa: S112 (decoders raise many kinds; counted, not fatal)
            continue
        yield transform(image), label


class ExportError(UserError, RuntimeError):
    """An export failed or does not reproduce the PyTorch model."""


def spread(items: Sequence[Any], count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``items`` (every class gets a share)."""
    if count <= 0 or not items:
        return []
    step = max(1, len(items) // count)
    return list(range(0, len(items), step))[:count]


@torch.no_grad()
def verify_onnx(
    path: Path,
    net: nn.Module,
    paths: Sequence[Path],
    labels: Sequence[int] | np.ndarray,
    pre: Preprocessing,
    uint8_input: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run ``path`` with onnxruntime and ``net`` (CPU, float32) on the same images.

    Images that cannot be read (changed since the pre-scan, or never scanned) are left out
    and counted (``unreadable``), as evaluation does.

    Returns:
        ``images`` (compared), ``unreadable``, ``top1_agreement`` (fraction with the same
        top-1 class), ``max_abs_logit_diff``, and the top-1 accuracy of each runtime against
        ``labels`` (-1: unknown, not counted).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    transform = eval_transform(pre)
    mean, std = pre.mean_std()
    net = net.eval()
    images_ok = list(readable(paths, labels, transform))
    agree, correct_torch, correct_onnx, max_diff = 0, 0, 0, 0.0
    for start in range(0, len(images_ok), batch_size):
        chunk = images_ok[start : start + batch_size]
        images = torch.stack([image for image, _ in chunk])
        floats = normalize(images, mean, std)
        feed = images.numpy() if uint8_input else floats.numpy()
        onnx_logits = torch.from_numpy(session.run(None, {"images": feed})[0])
        torch_logits = net(floats).float()
        truth = torch.tensor([label for _, label in chunk])
        max_diff = max(max_diff, float((onnx_logits - torch_logits).abs().max()))
        agree += int((onnx_logits.argmax(1) == torch_logits.argmax(1)).sum())
        correct_torch += int((torch_logits.argmax(1) == truth).sum())
        correct_onnx += int((onnx_logits.argmax(1) == truth).sum())
    count = max(1, len(images_ok))
    return {
        "images": len(images_ok),
        "unreadable": len(paths) - len(images_ok),
        "top1_agreement": agree / count,
        "max_abs_logit_diff": max_diff,
        "top1_pytorch": correct_torch / count,
        "top1_onnxruntime": correct_onnx / count,
    }
