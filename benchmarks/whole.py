"""Whole-command wall time, process start to exit: ``classifier fit`` with the shipped
quickstart config (every callback on, every file written) against the hand-written loop of
:mod:`benchmarks.hand_loop` (no files) on the same data, model and epochs.

Each side runs as its own process, in A-B-B-A order, so imports, set-up, checkpoints, figures
and the end-of-fit export all count, as they do for a user. ``*_first_step_s`` is the start-up
part: process start to the first training step.
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


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds of ``command``, and seconds from its start to its first training step."""
    startup = cwd / "startup.txt"
    startup.unlink(missing_ok=True)
    start = time.perf_counter()
    run_env = {**env, "BENCH_STARTUP": str(startup)}
    subprocess.run(command, cwd=cwd, env=run_env, check=True, capture_output=True)
    return time.perf_counter() - start, float(startup.read_text())


def bench_whole(
    root: Path, epochs: int, repeats: int = 2, background: bool = False
) -> dict[str, Any]:
    """Median wall seconds of both commands, ``repeats`` each, and their ratio; with
    ``background``, ``classifier`` writes its checkpoints on a background thread (the opt-in
    ``SafeCheckpointIO(asynchronous=True)``)."""
    from benchmarks.make_data import make

    data = make(root / f"whole-{SIZE}", TRAIN_IMAGES, SIZE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLASSIFIER_CACHE_DIR": str(root / "cache")}
    exe = str(Path(sys.executable).parent / "classifier")
    env["CLASSIFIER_ALLOWED_CLASS_PATHS"] = "benchmarks"
    ours = [
        exe, "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
        "--model.model_name", MODEL, "--data.data_dir", str(data), "--data.image_size",
        str(SIZE), "--data.batch_size", str(BATCH), "--trainer.max_epochs", str(epochs),
        # Both sides run every epoch: the config's EarlyStopping may not end the run sooner.
        "--trainer.min_epochs", str(epochs),
        "--trainer.callbacks+=benchmarks.probe.FirstStep",
    ]  # fmt: skip
    if background:
        layer = root / "background.yaml"
        layer.write_text(
            "trainer:\n  plugins:\n    - class_path: classifier.SafeCheckpointIO\n"
            "      init_args: {asynchronous: true}\n"
        )
        ours += ["--config", str(layer)]
    hand = [sys.executable, "-m", "benchmarks.hand_loop", str(data), str(epochs), MODEL]
    hand += [str(SIZE), str(BATCH), "2"]
    runs = root / f"whole-runs-{epochs}"
    runs.mkdir(parents=True, exist_ok=True)
    _timed(ours, runs, env)  # warm the scan cache and the page cache; not counted
    timings: dict[str, list[tuple[float, float]]] = {"classifier": [], "hand_loop": []}
    for repeat in range(repeats):
        order = (("classifier", ours), ("hand_loop", hand))
        for name, command in order if repeat % 2 == 0 else order[::-1]:
            timings[name].append(_timed(command, runs, env))
    result: dict[str, Any] = {"epochs": epochs}
    for name, values in timings.items():
        result[f"{name}_s"] = statistics.median(v[0] for v in values)
        result[f"{name}_first_step_s"] = statistics.median(v[1] for v in values)
    result["ratio"] = result["classifier_s"] / result["hand_loop_s"]
    return result
