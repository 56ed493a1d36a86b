"""Configs and checkpoints cannot run code; errors a user can act on."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from classifier.arguments import config_from_checkpoint
from classifier.checkpoint import CheckpointError
from classifier.losses import NonFiniteLossError
from classifier.safety import UnsafeConfigError
from tests.conftest import CONF, classifier_process, run_cli, tiny

EVIL = "tests.evil_module.Payload"  # outside the allow-list once it is emptied


def test_foreign_class_path_in_config_is_refused_before_import(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLASSIFIER_ALLOWED_CLASS_PATHS", "")
    config = yaml.safe_load((CONF / "tiny.yaml").read_text())
    config["trainer"]["callbacks"].append({"class_path": "os.system", "init_args": {}})
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UnsafeConfigError, match=r"'os.system'"):
        run_cli(*tiny("fit", image_folder), "--config", str(path))
    with pytest.raises(UnsafeConfigError, match=r"subprocess\.Popen"):
        run_cli(*tiny("fit", image_folder), "--trainer.callbacks+=subprocess.Popen")
    with pytest.raises(UnsafeConfigError, match=EVIL):
        run_cli(*tiny("fit", image_folder), f"--trainer.logger={{class_path: {EVIL}}}")
    with pytest.raises(UnsafeConfigError, match=EVIL):
        run_cli(*tiny("fit", image_folder), f"--trainer.callbacks+={EVIL}")
    assert "tests.evil_module" not in sys.modules


def _checkpoint(folder: Path) -> Path:
    cli: Any = run_cli(*tiny("fit", folder, "--trainer.max_epochs", "1"))
    return Path(cli.trainer.checkpoint_callback.best_model_path)


@pytest.mark.slow
def test_foreign_class_path_in_checkpoint_is_refused(image_folder: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(_checkpoint(image_folder), weights_only=True)
    checkpoint["hyper_parameters"]["optimizer"] = {"class_path": "os.system", "init_args": {}}
    path = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeConfigError, match=r"os\.system"):
        config_from_checkpoint(path)
    with pytest.raises(UnsafeConfigError):
        run_cli("test", "--ckpt_path", str(path))


class Payload:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch pickled_payload_ran.txt",))


def test_pickled_payload_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "payload.ckpt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": {}, "x": Payload()}, handle)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        config_from_checkpoint(path)
    assert not (tmp_path / "pickled_payload_ran.txt").exists()


@pytest.mark.slow
def test_truncated_checkpoint_is_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    data = _checkpoint(image_folder).read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated file"):
        run_cli("predict", "--ckpt_path", str(path), "--data.predict_dir", str(image_folder))


@pytest.mark.slow
def test_nan_loss_stops_without_overwriting_checkpoints(image_folder: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="NaN or infinite"):
        run_cli(*tiny("fit", image_folder, "--model.lr", "1e30", "--trainer.max_epochs", "3"))
    for path in Path("runs").rglob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(image_folder: Path, tmp_path: Path) -> None:
    result = classifier_process(
        *tiny("fit", image_folder),
        "--trainer.max_epochs",
        "3",
        "--trainer.callbacks+=tests.probes.TermAt",
        "--trainer.callbacks.init_args.epoch=1",
        "--trainer.callbacks.init_args.batch=2",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 143, result.stderr[-3000:]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    state = torch.load(last, weights_only=True)
    assert (
        state["epoch"] == 1 and state["global_step"] == 4 + 3
    )  # mid-epoch, exact step (4 full batches an epoch)


@pytest.mark.slow
def test_secrets_in_the_environment_never_reach_run_files(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789abcdef"
    for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, secret)
    cli: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    run = Path(cli.trainer.log_dir)
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_half_precision_weights_are_refused_on_the_python_route_too(image_folder: Path) -> None:
    """The command refuses ``bf16-true`` before reading data; a script that builds its own
    Trainer meets the same refusal in the model's setup (its metrics' counts would be
    bfloat16 and miscount above 256)."""
    import lightning.pytorch as pl

    from classifier.datamodule import ImageFolderDataModule
    from classifier.errors import ConfigError
    from classifier.model import ImageClassifier

    model = ImageClassifier("test_resnet", ["cat", "dog", "fox"], pretrained=False)
    data = ImageFolderDataModule(str(image_folder), image_size=32, num_workers=0)
    trainer = pl.Trainer(
        precision="bf16-true",
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    with pytest.raises(ConfigError, match="use bf16-mixed"):
        trainer.fit(model, datamodule=data)
