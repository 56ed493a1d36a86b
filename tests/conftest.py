"""Fixtures: tiny image folders generated on the fly, and an in-process CLI runner."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CONF = Path(__file__).parent / "conf"
#: ``tiny.yaml`` with every callback the shipped configs use, layered from ``callbacks.yaml``.
FULL = ["--config", str(CONF / "tiny.yaml"), "--config", str(CONF / "callbacks.yaml")]
REPO = Path(__file__).parent.parent

#: One colour per class: separable at a glance, so a tiny model learns it in a few steps.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (200, 50, 200)]

os.environ.setdefault("WANDB_MODE", "offline")


def draw(label: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A noisy image whose dominant colour and stripe orientation encode ``label``."""
    base = np.array(COLOURS[label % len(COLOURS)], dtype=np.float64)
    noise = rng.normal(0, 30, (size, size, 3))
    pixels = np.clip(base + noise, 0, 255)
    if label % 2:
        pixels[:, ::6] = 255
    else:
        pixels[::6, :] = 0
    return Image.fromarray(pixels.astype(np.uint8))


def make_folder(
    root: Path,
    classes: Sequence[str] = ("cat", "dog", "fox"),
    counts: dict[str, int] | None = None,
    skip: dict[str, Sequence[str]] | None = None,
    extra: dict[str, Sequence[str]] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/*.png``; ``skip`` leaves classes out of a split and
    ``extra`` adds classes (labelled like the first class) to a split."""
    counts = counts or {"train": 12, "val": 6, "test": 6}
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        names = [c for c in classes if c not in (skip or {}).get(split, ())]
        names += list((extra or {}).get(split, ()))
        for name in names:
            label = classes.index(name) if name in classes else 0
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(label, rng).save(folder / f"{name}_{i:03d}.png")
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``gpu`` tests out unless the marker expression names them (``make test-gpu``
    runs ``-m gpu`` on a GPU machine, where they must pass)."""
    if "gpu" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("gpu") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three separable classes with train/val/test splits."""
    return make_folder(tmp_path / "data")


@pytest.fixture
def folder_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build custom folders: ``folder_factory("name", classes=..., skip=...)``."""

    def build(name: str = "data", **kwargs: object) -> Path:
        return make_folder(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return build


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder with its own scan cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["classifier"])
    # Test probes are callbacks in tests/; trusted like a user's own package would be.
    monkeypatch.setenv("CLASSIFIER_ALLOWED_CLASS_PATHS", "tests.")
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _training_is_slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that trains must be marked ``slow`` (``make test-fast`` leaves those out)."""
    if request.node.get_closest_marker("slow") is not None:
        return
    from lightning.pytorch.loops import _FitLoop

    def refuse(*args: object, **kwargs: object) -> None:  # reached once fit starts training
        raise AssertionError(f"{request.node.nodeid} trains a model: mark it @pytest.mark.slow")

    monkeypatch.setattr(_FitLoop, "run", refuse)
    monkeypatch.setenv("CLASSIFIER_TEST_NOT_SLOW", request.node.nodeid)


@functools.cache
def demo_digits() -> Path:
    """The bundled demo digits, written under ``data/mnist`` as ``make data`` does (a clean
    clone has none until then)."""
    from classifier import demo_data

    return demo_data.write_mnist(REPO / "data" / "mnist")


def run_cli(*args: str) -> object:
    """Run ``classifier`` in-process with the tiny test config."""
    from classifier.cli import main

    return main(list(args))


def classifier_process(
    *args: str, cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m classifier`` as its own process (DDP launches, kill signals)."""
    unmarked = os.environ.get("CLASSIFIER_TEST_NOT_SLOW")
    assert unmarked is None or args[:1] != ("fit",), f"{unmarked} trains: mark it slow"
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]  # kept: a DALI install
    env = {
        **os.environ,
        "CLASSIFIER_ALLOWED_CLASS_PATHS": "tests.",
        "PYTHONPATH": os.pathsep.join(paths),
    }
    return subprocess.run(
        [sys.executable, "-m", "classifier", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny(command: str, data: Path, *extra: str) -> list[str]:
    """Arguments for a fast run of ``tests/conf/tiny.yaml`` on ``data``."""
    return [command, "--config", str(CONF / "tiny.yaml"), "--data.data_dir", str(data), *extra]


def full(command: str, data: Path, *extra: str) -> list[str]:
    """As :func:`tiny`, with every callback the shipped configs use (:data:`FULL`)."""
    return [command, *FULL, "--data.data_dir", str(data), *extra]


@pytest.fixture
def exported_model(tmp_path: Path) -> Path:
    """A small export made without training (the predictor needs only a valid file)."""
    from classifier.export import ExportOptions, export_and_verify
    from classifier.model import ImageClassifier
    from classifier.transforms import Preprocessing

    model = ImageClassifier("test_resnet", ["cat", "dog", "fox"], pretrained=False)
    pre = Preprocessing.from_crop_pct(32, 1.0, "bilinear", (0.5,) * 3, (0.25,) * 3)
    path = tmp_path / "model.onnx"
    export_and_verify(model.model, path, model.class_names, pre, ExportOptions(simplify=False))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file an attack would create if any of its code ran."""
    return tmp_path / "MARKER"
