"""Regression tests for the third round of hostile attacks (a hostile review of the fixes in
test_trust.py): each failed on the code before its fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import CONF, run_cli, tiny
from tests.test_attacks import assert_one_error_line, run_entry
from tests.test_malformed_inputs import bad_checkpoint

EXE = str(Path(sys.executable).parent / "classifier")


def _resume_checkpoint(image_folder: Path, change: Any) -> Path:
    """A real ``last.ckpt`` of a one-epoch run, with ``change`` applied to its state."""
    fit: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    path = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    evil = path.parent.parent.parent / "evil.ckpt"
    torch.save(checkpoint, evil)
    return evil


@pytest.mark.slow
def test_callback_paths_in_a_resumed_checkpoint_delete_and_rewrite_nothing(
    image_folder: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    (victim / "deep").mkdir(parents=True)
    (victim / "deep" / "precious.txt").write_text("keep")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    before = other.stat()

    def plant(checkpoint: dict[str, Any]) -> None:
        for state in checkpoint["callbacks"].values():
            if "best_model_path" in state:
                relative = "../" * 30 + str(victim).lstrip("/")
                state["best_model_path"] = f"runs/tiny/version_1/checkpoints/{relative}"
                state["kth_best_model_path"] = str(victim)
                state["best_k_models"] = {str(victim): torch.tensor(-1.0), str(other): 2.0}
                state["dirpath"] = "runs/tiny/version_1/checkpoints"

    evil = _resume_checkpoint(image_folder, plant)
    cli: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.max_epochs", "3", "--test_after_fit", "true"),
        "--trainer.callbacks+=classifier.Calibration",
        "--ckpt_path",
        str(evil),
    )
    assert (victim / "deep" / "precious.txt").read_text() == "keep"
    after = other.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.parent == Path(cli.trainer.log_dir) / "checkpoints"


def test_a_checkpoint_file_removal_never_removes_a_folder(tmp_path: Path) -> None:
    from classifier.checkpoint import SafeCheckpointIO

    folder = tmp_path / "keep.ckpt"
    folder.mkdir()
    (folder / "x").write_text("x")
    with pytest.warns(UserWarning, match="not a checkpoint file"):
        SafeCheckpointIO().remove_checkpoint(folder)
    assert (folder / "x").exists()


@pytest.mark.slow
def test_evaluation_into_a_used_logger_folder_is_refused_before_anything_changes(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fit: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    run = Path(fit.trainer.log_dir)
    snapshot = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    best = fit.trainer.checkpoint_callback.best_model_path
    args = ["test", "--ckpt_path", best, "--config", str(CONF / "tiny.yaml")]
    code, err = run_entry(capsys, *args, "--trainer.logger.init_args.version", run.name)
    assert_one_error_line(code, err, "already holds another run's files")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == snapshot


def test_a_checkpoint_folder_outside_the_run_is_refused(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = tmp_path / "dirpath.yaml"
    layer.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {tmp_path / 'elsewhere'}, filename: last}}\n"
    )
    code, err = run_entry(capsys, *tiny("fit", image_folder), "--config", str(layer))
    assert_one_error_line(code, err, "outside the run folder")


@pytest.mark.parametrize(
    "change",
    [
        {"state_dict": {"model.fc.weight": torch.full((2, 2), float("nan"))}},
        {"state_dict": {"w": torch.zeros(1), "temperature": torch.tensor([1.0, 2.0])}},
        {"datamodule_hyper_parameters": {"image_size": 40000}},
        {"selective": {"means": torch.zeros(2, 3), "precision": torch.eye(3),
                       "confidence_threshold": float("nan"), "distance_threshold": 1.0,
                       "target_accuracy": 0.9, "coverage": 0.9}},
    ],
)  # fmt: skip
def test_hostile_checkpoint_values_are_one_error_line(
    change: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bad_checkpoint(tmp_path, change)
    code, err = run_entry(capsys, "predict", "--ckpt_path", str(path), "--data.predict_dir", ".")
    assert_one_error_line(code, err, "bad.ckpt")


def test_a_fifo_or_broken_config_is_one_error_line(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    code, err = run_entry(capsys, "fit", "--config", str(fifo))
    assert_one_error_line(code, err, "not a regular file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [1, 2\n")
    code, err = run_entry(capsys, "fit", "--config", str(broken), "--ckpt_path", "last")
    assert code != 0 and "Traceback" not in err


def test_an_empty_cache_variable_is_the_default_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from classifier.scan_cache import cache_dir

    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", "")
    assert cache_dir() == Path.home() / ".cache" / "classifier"


def test_a_huge_file_is_excluded_without_being_read(tmp_path: Path) -> None:
    from classifier.prescan import check_file

    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.truncate(3 << 30)  # sparse: no disk used
    reason = check_file(str(huge)).reason
    assert reason is not None and "larger than" in reason
