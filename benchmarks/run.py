"""``make bench``: speed ratios measured side by side in one run on this machine.

Every ratio compares two things timed in the same process, interleaved and repeated, and
reports medians; absolute numbers vary between machines and runs, ratios much less. Results go
to stdout and ``bench.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.timing import REPEATS, interleaved, median_time

REPO = Path(__file__).resolve().parent.parent


def bench_pipeline(data: Path) -> dict[str, float]:
    """Images/s of one loader worker: uint8 tensors + decode_jpeg vs PIL + float v2."""
    from torchvision import datasets
    from torchvision.transforms import v2

    from classifier.image_dataset import ImageDataset
    from classifier.splits import read_split
    from classifier.transforms import Preprocessing, normalize, train_transform

    pre = Preprocessing.from_crop_pct(
        224, 0.875, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    split = read_split("train", data / "train", sorted(p.name for p in (data / "train").iterdir()))
    ours = ImageDataset(split.paths, split.labels, train_transform(pre))
    mean, std = pre.mean_std()
    plain = datasets.ImageFolder(
        str(data / "train"),
        v2.Compose(
            [
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.RandomResizedCrop(224, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.Normalize(pre.mean, pre.std),
            ]
        ),
    )
    count = min(len(ours), 300)

    def run_ours() -> float:
        start = time.perf_counter()
        for i in range(count):
            normalize(ours[i][0].unsqueeze(0), mean, std)  # normalisation happens on device
        return count / (time.perf_counter() - start)

    def run_plain() -> float:
        start = time.perf_counter()
        for i in range(count):
            plain[i]
        return count / (time.perf_counter() - start)

    torch.set_num_threads(1)  # one loader worker's worth of CPU
    try:
        mine, theirs = interleaved(run_ours, run_plain, REPEATS)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return {"ours_images_per_s": mine, "pil_float_images_per_s": theirs, "ratio": mine / theirs}


def bench_ema() -> dict[str, Any]:
    """EMA update per optimizer step, resnet50 on the CPU: the shipped path, the fused one it
    replaced and Lightning's public path, side by side (:mod:`benchmarks.ema_step`)."""
    from benchmarks.ema_step import bench_ema_step

    return bench_ema_step()


def bench_help() -> dict[str, float]:
    """``classifier --help`` wall time vs ``import lightning, timm`` in a fresh interpreter."""
    exe = Path(sys.executable).parent / "classifier"

    def cli() -> float:
        return median_time(
            lambda: subprocess.run([str(exe), "--help"], capture_output=True, check=True), 1
        )

    def imports() -> float:
        code = "import lightning, timm"
        return median_time(lambda: subprocess.run([sys.executable, "-c", code], check=True), 1)

    help_s, import_s = interleaved(cli, imports, REPEATS)
    return {"help_s": help_s, "import_lightning_timm_s": import_s, "ratio": help_s / import_s}


def bench_auroc() -> dict[str, float]:
    """The validation metric path with 1,000 classes and 5,000 images (20 batches): seconds
    with and without the AUROC, and torchmetrics' per-class loop for the same AUROC."""
    from torchmetrics.classification import MulticlassAUROC

    from classifier.metrics import StageMetrics

    classes, images, batch = 1000, 5000, 250
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (images,), generator=generator)
    logits = torch.randn(images, classes, generator=generator)

    def epoch(with_auroc: bool) -> float:
        stage = StageMetrics(classes)
        if not with_auroc:
            stage.auroc.update = lambda *a: None  # type: ignore[method-assign]
            stage.auroc.compute = lambda: torch.zeros(classes)  # type: ignore[method-assign]
        start = time.perf_counter()
        for i in range(0, images, batch):
            stage.update(logits[i : i + batch], labels[i : i + batch])
        stage.compute_logged()
        return time.perf_counter() - start

    def torchmetrics_auroc() -> float:
        metric = MulticlassAUROC(classes, average=None, thresholds=None)
        start = time.perf_counter()
        for i in range(0, images, batch):
            metric.update(logits[i : i + batch].softmax(1), labels[i : i + batch])
        metric.compute()
        return time.perf_counter() - start

    with_s, without_s = interleaved(lambda: epoch(True), lambda: epoch(False), REPEATS)
    reference_s = statistics.median(torchmetrics_auroc() for _ in range(REPEATS))
    return {
        "metric_path_s": with_s,
        "metric_path_without_auroc_s": without_s,
        "auroc_s": with_s - without_s,
        "torchmetrics_auroc_s": reference_s,
    }


def bench_duplicates() -> dict[str, float]:
    """Seconds to find near duplicates among 100,000 perceptual hashes (one core), and the
    banded index's speed-up over all pairs measured on 8,000 of them."""
    import numpy as np

    from classifier.hash_search import near_pairs

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 100_000, dtype=np.uint64) * 2
    hashes[1::50] = hashes[::50] ^ np.uint64(0b1011)  # 2,000 planted near copies (3 bits)
    seconds = median_time(lambda: near_pairs(hashes, 4))
    sample = hashes[:8000]

    def brute() -> object:
        return [
            np.flatnonzero(np.bitwise_count(sample[i + 1 :] ^ h) <= 4) for i, h in enumerate(sample)
        ]

    banded_s, brute_s = interleaved(
        lambda: median_time(lambda: near_pairs(sample, 4), 1),
        lambda: median_time(brute, 1),
        REPEATS,
    )
    # Skewed: 30 % nearly flat pictures, whose hashes have few bits set. They are compared byte
    # for byte only (perceptual_hash.informative), so the search stays fast.
    from classifier.health import ImageRecord, duplicate_groups

    flat = np.zeros(30_000, dtype=np.uint64)
    for _ in range(3):
        flat |= np.uint64(1) << rng.integers(0, 64, 30_000).astype(np.uint64)
    skewed = hashes.copy()
    skewed[:30_000] = flat
    records = [ImageRecord("train", "a", str(i), str(i), int(h)) for i, h in enumerate(skewed)]
    skewed_s = median_time(lambda: duplicate_groups(records, 4))
    even_s, shared_s = _shared_rows(rng)
    return {
        "hashes_100k_s": seconds,
        "skewed_100k_s": skewed_s,
        "speedup_vs_all_pairs_8k": brute_s / banded_s,
        "hashes_1m_s": even_s,
        "shared_rows_1m_s": shared_s,
        "shared_rows_vs_even_1m": shared_s / even_s,
    }


def _shared_rows(rng: Any) -> tuple[float, float]:
    """Seconds for 10^6 random hashes, and for the same with a third of them sharing 26 bits
    (flat top and bottom rows: pictures on a white background), side by side. Comparing that
    third pair by pair in each band's cell takes about ten minutes (classifier.hash_search)."""
    import numpy as np

    from classifier.hash_search import near_pairs

    even = rng.integers(0, 2**63, 1_000_000, dtype=np.uint64)
    shared = even.copy()
    flat = rng.random(len(shared)) < 0.35
    shared[flat] &= np.uint64(((1 << 51) - 1) & ~((1 << 13) - 1))
    return interleaved(
        lambda: median_time(lambda: near_pairs(even, 4), 1),
        lambda: median_time(lambda: near_pairs(shared, 4), 1),
        1,
    )


def _steps(tmp: Path, whole_epochs: list[int]) -> list[tuple[str, Callable[[], Any]]]:
    """Each measurement of ``make bench`` by name, in the order they run."""
    from benchmarks.cache_images import bench_cache_images
    from benchmarks.fit_vs_loop import bench_fit
    from benchmarks.label_issues import bench_label_issues
    from benchmarks.make_data import make
    from benchmarks.onnx_speed import bench_int8, bench_onnx
    from benchmarks.scan import bench_first_run, bench_loader_memory, bench_warm_start
    from benchmarks.selective import bench_selective
    from benchmarks.small_copies import bench_small_copies
    from benchmarks.transfer import bench_transfer
    from benchmarks.whole import bench_whole

    data = make(tmp / "jpeg", 384, 256, val=96)
    return [
        ("fit_vs_hand_loop", lambda: bench_fit(data, tmp)),
        ("input_pipeline", lambda: bench_pipeline(data)),
        ("ema", bench_ema),
        ("onnx_vs_eager", lambda: bench_onnx(tmp)),
        ("int8_vs_fp32", lambda: bench_int8(tmp)),
        ("selective_demo", lambda: bench_selective(tmp / "selective")),
        ("label_issues_demo", lambda: bench_label_issues(tmp / "labels")),
        ("transfer", lambda: bench_transfer(tmp / "transfer")),
        ("help_vs_import", bench_help),
        ("duplicates", bench_duplicates),
        ("small_copies", bench_small_copies),
        ("auroc_1000_classes", bench_auroc),
        ("scan_first_run_vs_decode", lambda: bench_first_run(tmp)),
        ("warm_start_100k_vs_1k", lambda: bench_warm_start(tmp)),
        ("loader_memory_200k", bench_loader_memory),
        ("cache_images", lambda: bench_cache_images(tmp / "cache")),
        *((f"whole_command_{e}_epochs", lambda e=e: bench_whole(tmp, e)) for e in whole_epochs),
        *(
            (
                f"whole_command_{e}_epochs_background_checkpoints",
                lambda e=e: bench_whole(tmp, e, background=True),
            )
            for e in whole_epochs[-1:]
        ),
    ]


#: Each goal: the result (``name.suffix`` for a second goal of one result), its key, the
#: comparison and the target.
GOALS: dict[str, tuple[str, str, float]] = {
    "fit_vs_hand_loop": ("ratio", ">=", 0.97),
    "input_pipeline": ("ratio", ">=", 1.7),
    "ema": ("fraction_of_step", "<=", 0.02),
    "onnx_vs_eager": ("batch8_speedup", ">=", 1.5),
    "int8_vs_fp32": ("latency_ratio", "<=", 0.7),
    "int8_vs_fp32.size": ("size_ratio", "<=", 0.35),
    "selective_demo": ("no_class_rejected_vs_test", ">=", 5.0),
    "selective_demo.coverage": ("test_accepted", ">=", 0.85),
    "selective_demo.gain": ("accepted_minus_all", ">", 0.0),
    "label_issues_demo": ("train_precision_top_k", ">=", 0.6),
    "label_issues_demo.val": ("val_recall_top_2k", ">=", 0.6),
    "label_issues_demo.cost": ("cost_share", "<=", 0.02),
    "transfer": ("min_gain_over_scratch", ">=", 0.10),
    "transfer.lp_ft": ("lp_ft_minus_full_ft", ">=", 0.0),
    "transfer.frozen_epoch": ("frozen_epoch_ratio", "<=", 0.6),
    "help_vs_import": ("ratio", "<=", 1.15),
    "duplicates": ("hashes_100k_s", "<=", 10.0),
    "duplicates.shared": ("shared_rows_vs_even_1m", "<=", 2.0),
    "small_copies": ("demo_false_pairs", "<=", 0),
    "small_copies.recall": ("demo_planted_recall", ">=", 1.0),
    "scan_first_run_vs_decode": ("ratio", "<=", 0.25),
    "warm_start_100k_vs_1k": ("first_step_ratio", "<=", 1.3),
    "warm_start_100k_vs_1k.memory": ("peak_memory_ratio", "<=", 1.5),
    "cache_images": ("ratio", ">=", 2.0),
    "cache_images.loader": ("loader_ratio", ">=", 2.0),
    "cache_images.memory": ("used_vs_estimate", "<=", 1.1),
}


def _print_goals(results: dict[str, Any], whole_epochs: list[int]) -> None:
    """The table of measured ratios against their goals."""
    goals = {**GOALS, **{f"whole_command_{e}_epochs": ("ratio", "<=", 1.10) for e in whole_epochs}}
    print("\nratio                                  measured   goal")
    for name, (key, op, goal) in goals.items():
        if name.split(".")[0] not in results:
            continue
        value = results[name.split(".")[0]][key]
        ok = {">=": value >= goal, "<=": value <= goal, ">": value > goal}[op]
        print(f"{name + '.' + key:38s} {value:8.3f}   {op} {goal}  {'ok' if ok else 'MISSED'}")


def _print_details(results: dict[str, Any], whole_epochs: list[int]) -> None:
    """What a ratio alone does not say: whole-command times, AUROCs, the end-of-fit share."""
    from benchmarks.selective import table
    from benchmarks.transfer import table as transfer_table

    for e in whole_epochs:
        whole = results.get(f"whole_command_{e}_epochs")
        if whole is not None:
            print(
                f"whole_command_{e}_epochs: classifier {whole['classifier_s']:.1f} s (first step"
                f" at {whole['classifier_first_step_s']:.1f} s), hand loop"
                f" {whole['hand_loop_s']:.1f} s (first step at"
                f" {whole['hand_loop_first_step_s']:.1f} s)"
            )
    if "selective_demo" in results:
        print("\nselective_demo, AUROC of each score (test digits against no-class images):")
        print(table(results["selective_demo"]))
    cache = results.get("cache_images")
    if cache is not None:
        print(
            f"\ncache_images ({cache['images']} photos, {cache['model']}): epochs none"
            f" {cache['none_epoch_s']} s, ram {cache['ram_epoch_s']} s; val top-1 none"
            f" {cache['none_val_top1']:.3f}, ram {cache['ram_val_top1']:.3f}; cache"
            f" {cache['shm_used_gb']:.2f} GB used of {cache['estimate_gb']:.2f} GB estimated;"
            f" training loader alone {cache['loader_ratio']:.2f}x faster with ram"
        )
    if "transfer" in results:
        print("\n" + transfer_table(results["transfer"]))
    fit = results.get("fit_vs_hand_loop")
    if fit is not None:
        print(
            f"\nfit_vs_hand_loop.ratio_with_end_of_fit {fit['ratio_with_end_of_fit']:.3f}: the"
            f" end-of-fit figures ({fit['end_of_fit_s']:.1f} s, once per run) charged to the two"
            " timed epochs"
        )


def main() -> None:
    """Run the measurements (``BENCH_ONLY="ema duplicates"`` picks some), print the ratios
    against their goals and write ``bench.json``."""
    # BENCH_WHOLE_EPOCHS="4 20": whole-command runs (the 20-epoch one takes ~10 minutes here,
    # its background-checkpoint variant as long again).
    whole_epochs = [int(e) for e in os.environ.get("BENCH_WHOLE_EPOCHS", "20").split()]
    only = os.environ.get("BENCH_ONLY", "").split()
    results: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
        for name, fn in _steps(Path(tmp), whole_epochs):
            if only and name not in only:
                continue
            print(f"[bench] {name} ...", flush=True)
            results[name] = fn()
            print(f"[bench] {name}: {json.dumps(results[name])}", flush=True)
    _print_goals(results, whole_epochs)
    _print_details(results, whole_epochs)
    Path("bench.json").write_text(json.dumps(results, indent=2))
    print("\nwrote bench.json")


if __name__ == "__main__":
    main()
