"""Wrong labels found by ``LabelIssues``: the demo digits with 4 % of train and 4 % of val
labels flipped at random, trained once with ``configs/quickstart.yaml``.

``python -m benchmarks.label_issues`` prints the result; ``make bench`` runs it too.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARE = 0.04


def flipped_copy(source: Path, target: Path, share: float = SHARE, seed: int = 0) -> set[str]:
    """Copy the digits to ``target`` with ``share`` of train and of val filed under another
    class chosen at random; the names of the moved files (``split/name``)."""
    rng = np.random.default_rng(seed)
    moved = set()
    shutil.copytree(source, target)
    for split in ("train", "val"):
        classes = sorted(p.name for p in (target / split).iterdir() if p.is_dir())
        files = sorted((target / split).glob("*/*.png"))
        for index in rng.choice(len(files), int(len(files) * share), replace=False):
            path = files[int(index)]
            others = [c for c in classes if c != path.parent.name]
            destination = target / split / str(rng.choice(others)) / path.name
            path.rename(destination)
            moved.add(f"{split}/{path.name}")
    return moved


def bench_label_issues(tmp: Path) -> dict[str, Any]:
    """Share of the top-K train rows that are flipped (K = flipped count), share of the flipped
    val images within the top 2K val rows, and the scoring's share of the training time."""
    from classifier.demo_data import write_mnist

    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "flipped"
    moved = flipped_copy(write_mnist(REPO / "data" / "mnist"), data)
    command = [sys.executable, "-m", "classifier", "fit", "--config", "configs/quickstart.yaml"]
    command += ["--data.data_dir", str(data), "--trainer.logger.init_args.save_dir", str(tmp)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    fit_s = time.perf_counter() - start
    run = next(tmp.glob("*/version_*"))
    with (run / "label_issues.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    result: dict[str, Any] = {"fit_s": round(fit_s, 1)}
    for split, depth in (("train", 1), ("val", 2)):
        flipped = {m for m in moved if m.startswith(f"{split}/")}
        ranked = [f"{split}/{Path(r['path']).name}" for r in rows if r["split"] == split]
        k = len(flipped)
        top = ranked[: depth * k]
        result[split] = {
            "flipped": k,
            "rows": len(ranked),
            f"flipped_in_top_{depth}k": round(sum(n in flipped for n in top) / k, 3),
        }
    summary = json.loads((run / "label_issues.json").read_text())
    result["val"]["estimated_wrong"] = summary["val"].get("estimated_wrong")
    if "test" in summary:  # no flips planted: the digits' own doubtful labels
        result["test"] = {k: summary["test"][k] for k in ("images", "suspects", "estimated_wrong")}
    result["train_precision_top_k"] = result["train"]["flipped_in_top_1k"]
    result["val_recall_top_2k"] = result["val"]["flipped_in_top_2k"]
    result["cost_share"] = round(summary["seconds"]["scoring"] / fit_s, 5)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1:  # a folder to keep
        print(json.dumps(bench_label_issues(Path(sys.argv[1])), indent=2))
    else:
        with tempfile.TemporaryDirectory(prefix="classifier-labels-") as folder:
            print(json.dumps(bench_label_issues(Path(folder)), indent=2))
