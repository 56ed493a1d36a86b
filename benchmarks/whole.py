"""Whole-command wall time, process start to exit: ``classifier fit`` with the shipped
quickstart config (every callback on, every file written) against the hand-written loop of
:mod:`benchmarks.hand_loop` (no files) on the same data, model and epochs.

Each side runs as its own process, in A-B-B-A order, so imports, set-up, checkpoints, figures
and the end-of-fit export all count, as they do for a user.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: The job: resnet18 at 32 px, batch 64, on 1,078 generated training images.
MODEL, SIZE, BATCH, TRAIN_IMAGES = "resnet18", 32, 64, 1078


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def bench_whole(root: Path, epochs: int, repeats: int = 2) -> dict[str, Any]:
    """Median wall seconds of both commands, ``repeats`` each, and their ratio."""
    from benchmarks.make_data import make

    data = make(root / f"whole-{SIZE}", TRAIN_IMAGES, SIZE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLASSIFIER_CACHE_DIR": str(root / "cache")}
    exe = str(Path(sys.executable).parent / "classifier")
    ours = [
        exe, "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
        "--model.model_name", MODEL, "--data.data_dir", str(data), "--data.image_size",
        str(SIZE), "--data.batch_size", str(BATCH), "--trainer.max_epochs", str(epochs),
    ]  # fmt: skip
    hand = [sys.executable, "-m", "benchmarks.hand_loop", str(data), str(epochs), MODEL]
    hand += [str(SIZE), str(BATCH), "2"]
    runs = root / f"whole-runs-{epochs}"
    runs.mkdir(parents=True, exist_ok=True)
    _timed(ours, runs, env)  # warm the scan cache and the page cache; not counted
    classifier_s, hand_s = [], []
    for repeat in range(repeats):
        order = ((ours, classifier_s), (hand, hand_s))
        for command, times in order if repeat % 2 == 0 else order[::-1]:
            times.append(_timed(command, runs, env))
    mine, theirs = statistics.median(classifier_s), statistics.median(hand_s)
    return {"epochs": epochs, "classifier_s": mine, "hand_loop_s": theirs, "ratio": mine / theirs}
