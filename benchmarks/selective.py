"""Which score rejects images of no known class: softmax confidence, energy or feature distance.

Trains ``configs/quickstart.yaml`` on the demo digits (or reads ``BENCH_SELECTIVE_CKPT``), then
scores the real test digits and four sets of images that belong to no class:

- ``noise8``: uniform noise drawn at 8x8 px and scaled up (the issue's measurement);
- ``noise28``: uniform noise at the digits' own 28 px;
- ``letters``: capital letters drawn like the digits (white on black, centred): another
  dataset's images, close to the training ones;
- ``photos``: photo-like pictures at ImageNet's average size (:func:`benchmarks.make_data.photo`).

For each score, the AUROC of telling the test digits (positives) from each set, and for the
checkpoint's own accept/reject rule the share of each set it rejects next to the share of test
digits it rejects. Run alone: ``python -m benchmarks.selective``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
COUNT = 200


def no_class_images(count: int = COUNT, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """RGB ``uint8`` ``3xHxW`` images of no digit class, ``count`` per set."""
    from benchmarks.make_data import photo

    rng = np.random.default_rng(seed)

    def noise(side: int) -> torch.Tensor:
        small = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((28, 28), Image.Resampling.NEAREST)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()

    def letter(i: int) -> torch.Tensor:
        image = Image.new("L", (28, 28))
        font = ImageFont.load_default(size=int(rng.integers(16, 24)))
        text = chr(ord("A") + i % 26)
        offset = rng.integers(-2, 3, 2)
        ImageDraw.Draw(image).text((14 + offset[0], 14 + offset[1]), text, 255, font, "mm")
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()

    def picture(i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(photo(seed * 10**6 + i))).permute(2, 0, 1).contiguous()

    return {
        "noise8": [noise(8) for _ in range(count)],
        "noise28": [noise(28) for _ in range(count)],
        "letters": [letter(i) for i in range(count)],
        "photos": [picture(i) for i in range(count)],
    }


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """Probability that a random in-distribution score exceeds a random outside one (ties
    count half): the Mann-Whitney statistic, on raw scores of any range."""
    ordered = outside.double().sort().values
    below = torch.searchsorted(ordered, inside.double(), right=False)
    not_above = torch.searchsorted(ordered, inside.double(), right=True)
    wins = below.double() + 0.5 * (not_above - below).double()
    return float(wins.sum() / (len(inside) * len(outside)))


class Scorer:
    """A checkpoint's network, preprocessing, temperature and accept/reject rule."""

    def __init__(self, ckpt: Path) -> None:
        from classifier.checkpoint import load_checkpoint
        from classifier.export import _network, _selector
        from classifier.transforms import Preprocessing

        checkpoint = load_checkpoint(str(ckpt))
        self.net, self.names, self.data = _network(checkpoint, str(ckpt))
        self.net.eval()
        self.pre = Preprocessing.from_dict(checkpoint["preprocessing"])
        self.temperature = float(checkpoint["temperature"])
        self.selector = _selector(checkpoint)
        if self.selector is None:
            raise SystemExit(
                f"{ckpt} has no accept/reject rule (train with classifier.Calibration)"
            )

    @torch.no_grad()
    def scores(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Confidence, energy (log-sum-exp of logits), negated distance, rule, prediction."""
        from classifier.selective import features_and_logits
        from classifier.transforms import eval_transform, normalize

        transform = eval_transform(self.pre)
        mean, std = self.pre.mean_std()
        batch = torch.stack([transform(image) for image in images])
        features, logits = features_and_logits(self.net, normalize(batch, mean, std))
        probabilities = (logits / self.temperature).softmax(1)
        confidence, predicted = probabilities.max(1)
        distance = self.selector.distance()(features)
        return {
            "confidence": confidence,
            "energy": torch.logsumexp(logits / self.temperature, 1),
            "feature_distance": -distance,
            "accepted": self.selector.accepted(confidence.double(), distance.double()),
            "predicted": predicted,
        }


def test_digits(folder: Path, names: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The test split's images and labels."""
    from classifier.image_dataset import load_rgb

    images, labels = [], []
    for label, name in enumerate(names):
        for path in sorted((folder / name).iterdir()):
            images.append(load_rgb(path))
            labels.append(label)
    return images, torch.tensor(labels)


def train_demo(tmp: Path) -> Path:
    """``best.ckpt`` of ``configs/quickstart.yaml`` on the demo digits, trained under ``tmp``."""
    from classifier.demo_data import write_mnist

    data = write_mnist(REPO / "data" / "mnist")
    command = [sys.executable, "-m", "classifier", "fit", "--config", "configs/quickstart.yaml"]
    command += ["--data.data_dir", str(data), "--trainer.logger.init_args.save_dir", str(tmp)]
    command += ["--test_after_fit", "false"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return next(tmp.glob("*/version_*/checkpoints/best.ckpt"))


def bench_selective(tmp: Path) -> dict[str, Any]:
    """AUROC of each score against each no-class set, and the rule's rejection rates."""
    given = os.environ.get("BENCH_SELECTIVE_CKPT")
    scorer = Scorer(Path(given) if given else train_demo(tmp))
    images, labels = test_digits(Path(scorer.data["data_dir"]) / "test", scorer.names)
    test = scorer.scores(images)
    correct = test["predicted"] == labels
    accepted = test["accepted"]
    rejected_test = 1 - float(accepted.double().mean())
    result: dict[str, Any] = {
        "test_images": len(labels),
        "test_accepted": float(accepted.double().mean()),
        "test_accuracy_all": float(correct.double().mean()),
        "test_accuracy_accepted": float(correct[accepted].double().mean()),
        "test_rejected": rejected_test,
    }
    worst_ratio = float("inf")
    for name, outside in no_class_images().items():
        found = scorer.scores(outside)
        rejected = 1 - float(found["accepted"].double().mean())
        ratio = rejected / max(rejected_test, 1e-9)
        worst_ratio = min(worst_ratio, ratio)
        result[name] = {
            "rejected": rejected,
            "rejected_vs_test": ratio,
            **{
                f"auroc_{score}": auroc(test[score], found[score])
                for score in ("confidence", "energy", "feature_distance")
            },
            "median_confidence": float(found["confidence"].median()),
        }
    result["median_test_confidence"] = float(test["confidence"].median())
    result["no_class_rejected_vs_test"] = worst_ratio
    result["accepted_minus_all"] = result["test_accuracy_accepted"] - result["test_accuracy_all"]
    return result


def table(result: dict[str, Any]) -> str:
    """The AUROCs side by side, one row per no-class set."""
    rows = [
        f"set        confidence   energy  distance   rejected (test: {result['test_rejected']:.1%})"
    ]
    for name in ("noise8", "noise28", "letters", "photos"):
        r = result[name]
        rows.append(
            f"{name:9s} {r['auroc_confidence']:10.3f} {r['auroc_energy']:8.3f}"
            f" {r['auroc_feature_distance']:9.3f}   {r['rejected']:.1%}"
        )
    return "\n".join(rows)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="classifier-selective-") as tmp:
        result = bench_selective(Path(tmp))
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
