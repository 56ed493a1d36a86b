"""Two CPU processes (DDP, gloo) see the same metrics and draws as one process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONF, FULL, classifier_process, make_folder, run_cli

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def _classifier(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = classifier_process(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _label_counts(checkpoint: Path) -> float:
    import torch

    saved = torch.load(checkpoint, weights_only=True)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("LabelIssues"))
    return float(state["count"].sum())


def _only_run(root: Path) -> Path:
    runs = sorted(p for p in (root / "runs").glob("*/version_*"))
    assert len(runs) == 1, runs  # rank 1 writes no run folder of its own
    return runs[0]


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_metrics_confusion_and_weighted_shards_match_one_process(tmp_path: Path) -> None:
    # 7 val images per class: 21 is odd, so a padding sampler would count one image twice.
    # 33 training images = 4 x 8 + 1 (one process) and 17 = 4 x 4 + 1 per process (two): a
    # last batch of one image would break BatchNorm, so it is dropped in both.
    data = make_folder(tmp_path / "data", counts={"train": 11, "val": 7})
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    common = [
        "fit",
        *FULL,
        "--data.data_dir",
        str(data),
        "--data.sampler",
        "weighted",
        "--trainer.max_epochs",
        "1",
    ]
    os.chdir(single_dir)
    single: Any = run_cli(*common, "--data.batch_size", "8")
    # Each of 2 processes takes batches of 4: the same global batch of 8.
    _classifier([*common, *DDP, "--data.batch_size", "4"], ddp_dir)
    one, two = single_dir / single.trainer.log_dir, _only_run(ddp_dir)

    draws = [json.loads((r / "sampler_distribution.json").read_text())[0] for r in (one, two)]
    assert draws[0]["effective_counts"] == draws[1]["effective_counts"]  # one weighted draw
    assert draws[1]["draws"] == 32  # what was trained on: the partial last batch is dropped
    # Every process's training margins reach the label-issue sums and the checkpoint.
    sums = [_label_counts(r / "checkpoints" / "last.ckpt") for r in (one, two)]
    assert sums[0] == sums[1] == 32
    issues = [json.loads((r / "label_issues.json").read_text()) for r in (one, two)]
    assert issues[0]["val"]["images"] == issues[1]["val"]["images"] == 21

    # Validate the same checkpoint with 1 and 2 processes: identical counts and metrics.
    best = str(one / "checkpoints" / "best.ckpt")
    validate = ["validate", "--ckpt_path", best, *FULL]
    os.chdir(single_dir)
    alone: Any = run_cli(*validate, "--data.data_dir", str(data))
    alone_dir = single_dir / alone.trainer.log_dir
    for path in (ddp_dir / "runs").glob("*/version_*"):
        path.rename(path.with_name("fit_" + path.name))
    _classifier([*validate, "--data.data_dir", str(data), *DDP], ddp_dir)
    together_dir = next(p for p in (ddp_dir / "runs").glob("*/version_*"))
    for name in ("confusion_matrix_val.csv", "val_per_class.csv"):
        assert (alone_dir / name).read_text() == (together_dir / name).read_text(), name
    matrix = (together_dir / "confusion_matrix_val.csv").read_text().splitlines()[1:]
    assert sum(int(v) for row in matrix for v in row.split(",")[1:]) == 21


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_trains_with_sam_and_accumulation_and_scores_every_training_image(
    tmp_path: Path,
) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 16, "val": 6})
    args = ["fit", "--config", str(CONF / "tiny.yaml"), "--data.data_dir", str(data), *DDP]
    args += ["--model.optimizer", "sam", "--trainer.callbacks+=classifier.LabelIssues"]
    args += ["--trainer.accumulate_grad_batches", "2", "--trainer.gradient_clip_val", "1"]
    _classifier(args, tmp_path)
    run = _only_run(tmp_path)
    issues = json.loads((run / "label_issues.json").read_text())
    assert issues["train"]["scored_images"] == issues["train"]["images"] == 48  # both processes
    import torch

    # 48 images in 2 processes x batches of 8 (tiny.yaml): 3 micro-batches, 2 steps an epoch.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_finds_the_near_copies_one_process_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run (empty scan caches): each process's loader workers hash what they decode,
    and when the second epoch starts the data health check combines them; the report is the
    one process's."""
    from tests.test_prescan import _photos

    data = _photos(tmp_path / "data", {"train/a/0.jpg": "val/b/copy.jpg"})
    common = ["fit", "--config", str(CONF / "tiny.yaml"), "--data.data_dir", str(data)]
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache_ddp"))
    _classifier([*common, *DDP, "--data.batch_size", "2"], tmp_path)
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache_one"))
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    os.chdir(single_dir)
    single: Any = run_cli(*common, "--data.batch_size", "4")
    reports = [
        json.loads((r / "data_health.json").read_text())
        for r in (_only_run(tmp_path), single_dir / single.trainer.log_dir)
    ]
    assert reports[0] == reports[1]
    assert reports[0]["near_duplicate_check"]["pending"] == 0
    leaks = [g for g in reports[0]["groups"] if "leakage" in g["kinds"]]
    assert len(leaks) == 1 and not leaks[0]["exact"]
