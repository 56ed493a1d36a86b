"""Every callback's outputs, read back and checked, from one full run on a tiny folder."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import FULL, REPO, make_folder, run_cli

EPOCHS = 3


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Fit with every callback (EPOCHS epochs), then test the best checkpoint."""
    root = tmp_path_factory.mktemp("full")
    data = make_folder(root / "data", counts={"train": 16, "val": 6, "test": 6})
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("CLASSIFIER_CACHE_DIR", str(root / "cache"))
    mp.setattr(sys, "argv", ["classifier"])
    try:
        cli: Any = run_cli(
            "fit",
            *FULL,
            "--data.data_dir",
            str(data),
            "--trainer.max_epochs",
            str(EPOCHS),
            "--test_after_fit",
            "true",
        )
    finally:
        mp.undo()
    return {"run": root / cli.trainer.log_dir, "data": data, "cli": cli}


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_confusion_matrix_counts_every_val_image_once(full_run: dict[str, Any]) -> None:
    run = full_run["run"]
    rows = _csv(run / "confusion_matrix_val.csv")
    matrix = np.array([[int(v) for k, v in r.items() if k != "true \\ predicted"] for r in rows])
    assert matrix.shape == (3, 3)
    assert matrix.sum() == 18  # 3 classes x 6 val images, sanity-check batches excluded
    history = _csv(run / "history.csv")
    assert matrix.trace() / matrix.sum() == pytest.approx(float(history[-1]["val_top1"]), abs=1e-6)
    test = np.array(
        [[int(v) for v in list(r.values())[1:]] for r in _csv(run / "confusion_matrix_test.csv")]
    )
    assert test.sum() == 18
    for name in (
        "confusion_matrix_val.png",
        "confusion_matrix_val_normalized.png",
        "confusion_matrix_test.png",
    ):
        assert Image.open(run / name).size[0] > 300
    # Every off-diagonal count of the matrix, largest first, with its share of the true class.
    pairs = _csv(run / "most_confused_val.csv")
    names = ["cat", "dog", "fox"]
    expected = sorted(
        (int(matrix[t, p]) for t in range(3) for p in range(3) if t != p and matrix[t, p]),
        reverse=True,
    )
    assert [int(r["count"]) for r in pairs] == expected
    for row in pairs:
        t, p = names.index(row["true"]), names.index(row["predicted"])
        assert int(row["count"]) == matrix[t, p]
        assert float(row["share_of_true"]) == pytest.approx(
            matrix[t, p] / matrix[t].sum(), abs=1e-4
        )


def test_history_has_one_row_per_epoch_including_the_last(full_run: dict[str, Any]) -> None:
    history = _csv(full_run["run"] / "history.csv")
    assert [int(r["epoch"]) for r in history] == list(range(EPOCHS))
    assert all(float(r["train_loss"]) > 0 for r in history)
    assert (full_run["run"] / "loss_history.png").is_file()
    assert (full_run["run"] / "metrics_history.png").is_file()


def test_model_info_counts_the_models_parameters(full_run: dict[str, Any]) -> None:
    info = json.loads((full_run["run"] / "model_info.json").read_text())
    model = full_run["cli"].model
    assert info["parameters"] == sum(p.numel() for p in model.model.parameters())
    assert info["gmacs"] > 0
    assert set(info["latency"]) == {"1", "4"}


def test_dataset_statistics(full_run: dict[str, Any]) -> None:
    stats = json.loads((full_run["run"] / "dataset_stats.json").read_text())
    assert stats["train"]["per_class"] == {"cat": 16, "dog": 16, "fox": 16}
    assert stats["val"]["images"] == 18 and stats["test"]["images"] == 18
    assert stats["train"]["imbalance_ratio"] == 1.0
    assert (full_run["run"] / "class_distribution_train.png").is_file()


def test_sampler_distribution_equals_folder_when_shuffling(full_run: dict[str, Any]) -> None:
    epochs = json.loads((full_run["run"] / "sampler_distribution.json").read_text())
    assert [e["epoch"] for e in epochs] == list(range(EPOCHS))
    assert epochs[-1]["effective"] == epochs[-1]["baseline"]
    assert epochs[-1]["draws"] == 48


def test_sample_grids_are_written(full_run: dict[str, Any]) -> None:
    for name in ("train_batch.png", "val_predictions.png"):
        width, height = Image.open(full_run["run"] / name).size
        assert width > 400 and height > 150


def test_onnx_matches_pytorch_on_real_images(full_run: dict[str, Any]) -> None:
    run = full_run["run"]
    for kind in ("best", "final"):  # export: all writes each model's own report and mapping
        report = json.loads((run / f"model_{kind}.export_report.json").read_text())
        assert report["passed"] is True and report["verified"] is True
        assert report["images"] == 18
        assert report["top1_agreement"] == 1.0
        assert report["max_abs_logit_diff"] < 1e-3
        assert (run / f"model_{kind}.onnx").is_file()
        mapping = json.loads((run / f"model_{kind}.labels_mapping.json").read_text())
        assert mapping["labels"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert not (run / "labels_mapping.json").exists()  # one writer, one name per model
    assert not list(run.glob("*.onnx.data"))  # one self-contained file


def _client_predict(model_path: Path, paths: list[Path]) -> list[str]:
    """A consumer that knows only onnxruntime, PIL, numpy and the file's metadata."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    meta = {
        k: json.loads(raw[k]) for k in ("image_size", "resize_size", "mean", "std", "class_names")
    }
    size, resize = meta["image_size"], meta["resize_size"]
    mean, std = np.array(meta["mean"]), np.array(meta["std"])
    predictions = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        w, h = image.size
        scale = resize / min(w, h)
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        x = ((np.asarray(image, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1)
        logits = session.run(None, {"images": x[None].astype(np.float32)})[0]
        predictions.append(meta["class_names"][int(logits.argmax())])
    return predictions


def test_onnx_metadata_lets_a_plain_client_reproduce_accuracy(full_run: dict[str, Any]) -> None:
    paths = sorted((full_run["data"] / "test").rglob("*.png"))
    truth = [p.parent.name for p in paths]
    predicted = _client_predict(full_run["run"] / "model_best.onnx", paths)
    client_top1 = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    test_top1 = float(full_run["cli"].trainer.callback_metrics["test/top1"])
    assert client_top1 == pytest.approx(test_top1, abs=1 / 18 + 1e-6)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_runs_at_any_batch_size(full_run: dict[str, Any], batch: int) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(full_run["run"] / "model_best.onnx"), providers=["CPUExecutionProvider"]
    )
    out = session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})[0]
    assert out.shape == (batch, 3)


def test_ema_checkpoint_holds_averaged_weights(full_run: dict[str, Any]) -> None:
    last = torch.load(full_run["run"] / "checkpoints" / "last.ckpt", weights_only=True)
    raw, ema = last["current_model_state"], last["state_dict"]
    differs = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], raw[k])]
    assert len(differs) > 10


def test_confusion_matrix_over_max_classes_shows_the_most_confused(tmp_path: Path) -> None:
    """60 classes, plots capped at 50: the ten classes without errors are left out of the
    heatmaps, the CSV keeps all, and rows are normalised by each class's full support."""
    from classifier.confusion_matrix import ConfusionMatrix, focus_classes

    n = 60
    confmat = torch.eye(n, dtype=torch.long) * 10
    clean = set(range(0, n, 6))  # ten classes predicted perfectly
    for i in range(n):
        if i not in clean:
            confmat[i, i] -= 3
            confmat[i, (i + 1) % n if (i + 1) % n not in clean else (i + 2) % n] += 3
    keep = focus_classes(confmat, 50)
    assert keep == sorted(set(range(n)) - clean)
    names = [f"class{i:02d}" for i in range(n)]
    trainer: Any = type("T", (), {"loggers": []})()
    ConfusionMatrix(max_classes=50)._plot(trainer, confmat, names, "val", tmp_path, ", epoch 3", 0)
    for suffix in ("", "_normalized"):
        with Image.open(tmp_path / f"confusion_matrix_val{suffix}.png") as image:
            width, height = image.size
        assert width > 1000 and height > 1000  # 50 labelled rows, readable


def test_run_files_have_the_permissions_of_any_new_file(
    full_run: dict[str, Any], tmp_path: Path
) -> None:
    """Atomic writes go through private temporary files; the results must not stay private."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = plain.stat().st_mode & 0o777
    files = [p for p in full_run["run"].rglob("*") if p.is_file()]
    assert len(files) > 20
    assert {
        str(p.relative_to(full_run["run"])) for p in files if p.stat().st_mode & 0o777 != expected
    } == set()


def test_the_full_run_covers_every_callback_the_shipped_configs_use(
    full_run: dict[str, Any],
) -> None:
    import importlib

    import yaml

    shipped = set()
    for config in sorted((REPO / "configs").glob("*.yaml")):
        for entry in yaml.safe_load(config.read_text())["trainer"]["callbacks"]:
            module, _, name = entry["class_path"].rpartition(".")
            shipped.add(getattr(importlib.import_module(module), name))
    ran = {type(c) for c in full_run["cli"].trainer.callbacks}
    assert shipped, "configs/ name no callbacks"
    assert not {c.__name__ for c in shipped} - {c.__name__ for c in ran}
    assert all(any(issubclass(r, c) for r in ran) for c in shipped)


def test_the_shipped_warm_up_and_schedule_reach_the_optimizer(full_run: dict[str, Any]) -> None:
    # callbacks.yaml sets warmup_epochs 0.5 like the shipped configs; LearningRateMonitor
    # logs every step: 16 images x 3 classes / batch 8 = 6 steps per epoch, so 3 warm-up steps.
    rows = [r for r in _csv(full_run["run"] / "metrics.csv") if r.get("lr-AdamW/network_no_decay")]
    lrs = [float(r["lr-AdamW/network_no_decay"]) for r in rows]  # "network": the same rate
    assert len(lrs) == 6 * EPOCHS
    base = 0.01  # tiny.yaml
    assert lrs[:4] == pytest.approx([base / 4, 2 * base / 4, 3 * base / 4, base])
    assert lrs[-1] < lrs[4] and all(a >= b for a, b in itertools.pairwise(lrs[3:]))


class _Page(HTMLParser):
    """Sections, images and anything that would need the network or JavaScript."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.links: list[str] = []
        self.viewport = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.sections.append(str(found.get("id")))
        elif tag == "img":
            self.images.append(str(found.get("src")))
        elif tag == "script":
            self.scripts += 1
        elif tag == "meta" and found.get("name") == "viewport":
            self.viewport = True
        for key in ("href", "src"):
            value = str(found.get(key) or "")
            if value and not value.startswith("data:"):
                self.links.append(value)


def test_report_shows_every_part_of_the_run_in_one_page(full_run: dict[str, Any]) -> None:
    import base64
    import io

    page = _Page()
    page.feed((full_run["run"] / "report.html").read_text())
    expected = ["summary", "curves", "confusion", "per-class", "gallery", "calibration"]
    assert page.sections == [*expected, "labels", "data", "model", "export"]
    assert page.scripts == 0 and page.links == [] and page.viewport
    # loss, metrics, val and test matrices, gallery, val and test reliability, class counts,
    # and the suspect labels if there are any
    suspects = (full_run["run"] / "label_issues.png").is_file()
    assert len(page.images) == 8 + suspects
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.load()
            assert image.size[0] > 100
    text = (full_run["run"] / "report.html").read_text()
    assert "Test" in text and "model_best.onnx: passed" in text and "worst F1 first" in text


def test_report_renders_in_a_browser(full_run: dict[str, Any], tmp_path: Path) -> None:
    """Skipped only where no browser is installed and none is required: CI installs Debian's
    chromium and sets CLASSIFIER_TEST_BROWSER=required (.ci/run), so there it always runs."""
    import os
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        assert os.environ.get("CLASSIFIER_TEST_BROWSER") != "required", "chromium is missing"
        pytest.skip("headless Chromium is not installed (Debian: apt install chromium)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            str(browser),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=420,2400",  # a phone's width
            (full_run["run"] / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 20  # text, cards and figures, not a blank page
    assert (pixels < 100).mean() > 0.01  # dark ink (text, plot lines) is drawn


def test_too_few_validation_errors_leave_the_temperature_at_one_and_say_so(
    full_run: dict[str, Any],
) -> None:
    """18 validation images, none wrong: nothing to fit a temperature on. T stays 1 in
    best.ckpt and the export, the report says why (a fitted T reaching every consumer is
    tested in test_calibration.py)."""
    import onnxruntime as ort

    run = full_run["run"]
    report = json.loads((run / "calibration.json").read_text())
    assert set(report["val"]) == set(report["test"]) == {"before", "after"}
    assert report["temperature"] == 1.0 and report["note"].startswith("not calibrated")
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["temperature"] == 1.0
    session = ort.InferenceSession(str(run / "model_best.onnx"), providers=["CPUExecutionProvider"])
    assert float(session.get_modelmeta().custom_metadata_map["temperature"]) == 1.0
    assert (run / "calibration_val.png").is_file() and (run / "calibration_test.png").is_file()


class _Slow(torch.nn.Module):
    """A forward pass that takes ``seconds`` (a large model on a CPU)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import time

        self.calls += 1
        time.sleep(self.seconds)
        return images


def test_latency_is_timed_within_its_budget() -> None:
    from classifier.model_info import measure_latency

    slow, fast = _Slow(0.6), _Slow(0.0)
    cpu = torch.device("cpu")
    assert measure_latency(slow, 1, 8, cpu, repeats=5, budget_s=0.5) >= 0.6
    assert slow.calls == 2  # one warm-up, one timed pass: not 7 passes of a slow model
    measure_latency(fast, 1, 8, cpu, repeats=5, budget_s=0.5)
    assert fast.calls == 7  # two warm-ups and every repeat when there is time
