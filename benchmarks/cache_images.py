"""``data.cache_images: ram`` against ``none``: ``classifier fit`` at 128 px on generated
photo-sized JPEGs (500x375, a class tint over photo-like structure), one process per setting,
run side by side.

Reports the median epoch time after the first (the first decodes every file in both settings),
their ratio (goal: ``ram`` at least 2x faster; on a CPU the model's own time can dominate an
epoch, so the same ratio of the training loader alone, as a GPU that keeps up with its input
sees it, is reported beside it), the final validation top-1 of each (the same
within noise: the augmentation differs only in the detail the kept images lack), and the memory
the cache took in shared memory against the estimate it printed. ``BENCH_CACHE_IMAGES`` sets
the number of training images (default 10,000, the issue's, on a GPU machine; 1,000 on CPUs
only, where the 10,000-image fits take most of an hour; validation gets an eighth).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from PIL import Image

from benchmarks.make_data import CLASSES, photo

SIZE, EPOCHS, BATCH = 128, 3, 64
REPO = Path(__file__).resolve().parent.parent
#: Where the timing callback of the ``classifier`` process writes its numbers.
ENV_OUT = "BENCH_CACHE_OUT"


def _shm_used() -> int:
    """Bytes in use in ``/dev/shm`` (where the cache's shared pages live)."""
    return shutil.disk_usage("/dev/shm").used


class EpochTimes(Callback):
    """Each training epoch's wall time (its validation included), the last val top-1, the
    cache's estimate and the shared memory used once the first epoch filled the cache."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0
        self.shm_before = _shm_used()
        self.shm_filled = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.times.append(time.perf_counter() - self.start)
        if len(self.times) == 1:
            self.shm_filled = _shm_used() - self.shm_before

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        caches = getattr(trainer.datamodule, "caches", {})  # type: ignore[attr-defined]
        result = {
            "epoch_s": [round(t, 2) for t in self.times],
            "val_top1": float(trainer.callback_metrics["val/top1"]),
            "estimate_bytes": sum(c.nbytes for c in caches.values()),
            "shm_used_bytes": self.shm_filled,
            "peak_rss_main_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        Path(os.environ[ENV_OUT]).write_text(json.dumps(result))


def _tinted(args: tuple[Path, int, int]) -> None:
    path, seed, label = args
    rng = np.random.default_rng(label)
    colour = rng.integers(0, 255, 3)
    pixels = np.asarray(photo(seed), np.float64) * 0.6 + colour * 0.4
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


def make_tinted(root: Path, count: int) -> Path:
    """``count`` training and ``count // 8`` validation photo-sized JPEGs over 10 classes."""
    jobs = []
    for offset, (split, n) in enumerate((("train", count), ("val", max(CLASSES, count // 8)))):
        for i in range(n):
            path = root / split / f"class{i % CLASSES}" / f"{i:06d}.jpg"
            jobs.append((path, offset * 10**7 + i, i % CLASSES))
    todo = [j for j in jobs if not j[0].exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_tinted, todo, chunksize=64))
    return root


def _fit(data: Path, root: Path, cache: str, model: str) -> dict[str, Any]:
    out = root / f"{cache}.json"
    env = {
        **os.environ,
        ENV_OUT: str(out),
        "CLASSIFIER_ALLOWED_CLASS_PATHS": "benchmarks.",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    workers = min(8, os.cpu_count() or 1)
    command = [
        sys.executable, "-m", "classifier", "fit", "--seed_everything", "0",
        "--model.model_name", model, "--model.pretrained", "false", "--model.lr", "0.003",
        "--data.data_dir", str(data), "--data.image_size", str(SIZE),
        "--data.batch_size", str(BATCH), "--data.num_workers", str(workers),
        "--data.duplicate_bits", "-1", "--data.cache_images", cache,
        "--data.cache_images_gb", "64", "--trainer.max_epochs", str(EPOCHS),
        "--trainer.default_root_dir", str(root / cache), "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=benchmarks.cache_images.EpochTimes",
    ]  # fmt: skip
    subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _loader_epochs(data: Path, cache: str) -> tuple[list[float], int, int]:
    """Seconds of each pass over the training loader alone (decode, augment, collate; no
    model), as a GPU run that keeps up with its input sees the epoch; the cache's estimate and
    the shared memory in use after the passes (bytes)."""
    from classifier.datamodule import ImageFolderDataModule

    workers = min(8, os.cpu_count() or 1)
    module = ImageFolderDataModule(
        str(data), image_size=SIZE, batch_size=BATCH, num_workers=workers, seed=0,
        duplicate_bits=-1, cache_images=cache, cache_images_gb=64,
    )  # fmt: skip
    before = _shm_used()
    module.setup("fit")
    loader = module.train_dataloader()
    times = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        for _batch in loader:
            pass
        times.append(round(time.perf_counter() - start, 2))
    estimate = sum(c.nbytes for c in module.caches.values())
    return times, estimate, _shm_used() - before


def bench_cache_images(root: Path, count: int | None = None) -> dict[str, Any]:
    """Both settings on the same data and seed; ratio of the epochs after the first."""
    import torch

    gpu = torch.cuda.is_available()
    count = count or int(os.environ.get("BENCH_CACHE_IMAGES", "10000" if gpu else "1000"))
    model = "resnet18" if gpu else "test_resnet"
    data = make_tinted(root / f"photos{count}", count)
    runs = {cache: _fit(data, root, cache, model) for cache in ("none", "ram")}
    later = {k: statistics.median(r["epoch_s"][1:]) for k, r in runs.items()}
    loader = {cache: _loader_epochs(data, cache)[0] for cache in ("none", "ram")}
    ram = runs["ram"]
    return {
        "images": count,
        "model": model,
        "none_epoch_s": runs["none"]["epoch_s"],
        "ram_epoch_s": ram["epoch_s"],
        "ratio": later["none"] / later["ram"],
        "loader_none_epoch_s": loader["none"],
        "loader_ram_epoch_s": loader["ram"],
        "loader_ratio": statistics.median(loader["none"][1:])
        / statistics.median(loader["ram"][1:]),
        "none_val_top1": runs["none"]["val_top1"],
        "ram_val_top1": ram["val_top1"],
        "estimate_gb": ram["estimate_bytes"] / 1e9,
        "shm_used_gb": ram["shm_used_bytes"] / 1e9,
        "used_vs_estimate": ram["shm_used_bytes"] / max(1, ram["estimate_bytes"]),
    }


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="classifier-cache-bench-") as tmp:
        size = int(sys.argv[1]) if len(sys.argv) > 1 else None
        print(json.dumps(bench_cache_images(Path(tmp), size), indent=2))
