"""Graph breaks of the training step under ``torch.compile``: the network and the loss, for
resnet50 and a ViT (``python -m benchmarks.graph_breaks [MODEL ...]``, on CPU). Prints one JSON
line per model and loss with the break count and reasons."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch
import torch._dynamo

from classifier.losses import cross_entropy, mixed_cross_entropy
from classifier.model import ImageClassifier

MODELS = ("resnet50", "vit_small_patch16_224")


def _step(module: ImageClassifier, mixed: bool) -> Callable[..., torch.Tensor]:
    weight = torch.linspace(0.5, 1.5, 10)

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = module.model(images)
        if mixed:
            return mixed_cross_entropy(logits, targets, weight, 0.1)
        return cross_entropy(logits, targets, weight, 0.1)

    return step


def main() -> None:
    """Explain each model's step with hard labels and with mixed (MixUp/CutMix) targets."""
    for name in sys.argv[1:] or MODELS:
        module = ImageClassifier(name, [str(c) for c in range(10)], pretrained=False)
        images = torch.randn(2, 3, 224, 224)
        for mixed in (False, True):
            targets = torch.eye(10)[[1, 2]] if mixed else torch.tensor([1, 2])
            torch._dynamo.reset()
            explained = torch._dynamo.explain(_step(module, mixed))(images, targets)
            reasons = sorted({str(b.reason).splitlines()[0] for b in explained.break_reasons})
            row = {"model": name, "targets": "mixed" if mixed else "hard"}
            row |= {"graphs": explained.graph_count, "breaks": explained.graph_break_count}
            print(json.dumps(row | {"reasons": reasons}), flush=True)


if __name__ == "__main__":
    main()
