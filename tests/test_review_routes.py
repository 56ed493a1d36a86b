"""A hostile review of the documented routes: where `--ckpt_path last` looks, what a
checkpoint keyword or a checkpoint of another network gives, and who chooses the results
folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonargparse import Namespace

from classifier.arguments import chooses_logger, resolve_last
from classifier.checkpoint import CheckpointError
from tests.conftest import tiny
from tests.test_attacks import run_entry


def _last(root: Path, *parts: str, age: float = 0.0) -> Path:
    path = root.joinpath(*parts, "checkpoints", "last.ckpt")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    os.utime(path, (1e9 + age, 1e9 + age))
    return path


def _fit(logger: object, default_root_dir: str | None = None) -> Namespace:
    return Namespace(
        ckpt_path="last", trainer=Namespace(logger=logger, default_root_dir=default_root_dir)
    )


def _csv(save_dir: Path, name: str) -> Namespace:
    return Namespace(
        class_path="lightning.pytorch.loggers.CSVLogger",
        init_args=Namespace(save_dir=str(save_dir), name=name),
    )


def test_last_looks_in_this_experiments_run_folders_only(tmp_path: Path) -> None:
    """An experiment without runs of its own never resumes another experiment's (the search
    went down any depth: name "" found runs/other/version_0)."""
    runs = tmp_path / "runs"
    _last(runs, "other", "version_0")
    with pytest.raises(CheckpointError, match=r"no checkpoints/last\.ckpt under"):
        resolve_last(_fit(_csv(runs, "")), configured=True)
    mine = _last(runs, "tiny", "version_0")
    _last(runs, "tiny", "version_1", "nested", age=100)  # deeper: not a run folder of tiny
    config = _fit(_csv(runs, "tiny"))
    assert resolve_last(config, configured=True) == str(mine) == config.ckpt_path


def test_last_follows_wandbs_project_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WandB falls back to $WANDB_PROJECT before lightning_logs; so does the search."""
    other = _last(tmp_path, "lightning_logs", "a1", age=100)
    mine = _last(tmp_path, "proj", "b2")
    logger = Namespace(
        class_path="lightning.pytorch.loggers.WandbLogger",
        init_args=Namespace(save_dir=str(tmp_path), project=None),
    )
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    assert resolve_last(_fit(logger), configured=True) == str(mine)
    monkeypatch.delenv("WANDB_PROJECT")
    assert resolve_last(_fit(logger), configured=True) == str(other)


def test_last_never_resumes_through_a_planted_link(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _last(runs, "tiny", "version_0")
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes(b"x")
    planted = runs / "tiny" / "version_7" / "checkpoints"
    planted.mkdir(parents=True)
    (planted / "last.ckpt").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match=r"version_7/checkpoints/last\.ckpt is reached"):
        resolve_last(_fit(_csv(runs, "tiny")), configured=True)


def test_without_a_logger_last_is_the_root_folders_own(tmp_path: Path) -> None:
    mine = _last(tmp_path)
    _last(tmp_path, "someone", age=100)
    assert resolve_last(_fit(False, str(tmp_path)), configured=True) == str(mine)


def test_a_config_given_with_equals_chooses_the_results_folder() -> None:
    assert chooses_logger(["test", "--config=run.yaml", "--ckpt_path", "b.ckpt"])
    assert chooses_logger(["test", "-c", "run.yaml"]) and chooses_logger(["--trainer.logger=x"])
    assert not chooses_logger(["test", "--ckpt_path", "b.ckpt", "--data.data_dir", "d"])


@pytest.mark.parametrize("keyword", ["best", "hpc", "registry"])
def test_a_checkpoint_keyword_of_lightnings_is_one_error_line(
    image_folder: Path, tmp_path: Path, keyword: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`best` and `hpc` name a checkpoint of the same process; a new command has none."""
    os.chdir(tmp_path)
    code, err = run_entry(capsys, *tiny("fit", image_folder, "--ckpt_path", keyword))
    assert code == 1 and "Traceback" not in err
    assert f"error: ckpt_path {keyword} names no checkpoint in a new command" in err


def test_weights_of_another_network_are_one_error_line() -> None:
    """Resuming or evaluating with a config that builds another network: one line naming the
    first weight that differs, not Lightning's many-line state_dict error."""
    from classifier.model import ImageClassifier

    three = ImageClassifier("test_resnet", ["a", "b", "c"], pretrained=False)
    four = ImageClassifier("test_resnet", ["a", "b", "c", "d"], pretrained=False)
    checkpoint = {"state_dict": four.state_dict()}
    with pytest.raises(
        CheckpointError, match=r"weights of another network .*\(4,\) in the checkpoint, \(3,\) here"
    ):
        three.on_load_checkpoint(checkpoint)
    three.on_load_checkpoint(
        {"state_dict": {k: torch.clone(v) for k, v in three.state_dict().items()}}
    )


@pytest.mark.slow
def test_a_run_resumed_with_its_folder_spelled_another_way_keeps_its_best(
    image_folder: Path, tmp_path: Path
) -> None:
    """Started with ``save_dir: runs``, resumed with the same folder as an absolute path: the
    same run, so ModelCheckpoint keeps its best score (it compared the two spellings as text,
    dropped the score and wrote best-v1.ckpt from the resumed epochs only)."""
    from tests.conftest import run_cli

    os.chdir(tmp_path)
    run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    run = tmp_path / "runs" / "tiny" / "version_0"
    resumed: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.max_epochs", "2"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
    )
    assert Path(resumed.trainer.log_dir).resolve() == run.resolve()
    best = resumed.trainer.checkpoint_callback
    assert best.best_model_score is not None and Path(best.best_model_path).name == "best.ckpt"
    assert not list(run.glob("checkpoints/best-v*.ckpt"))


def test_a_missing_image_folder_is_named_without_another_commands_option(
    tmp_path: Path,
) -> None:
    """classifier-predict has no predict_dir option; the message names the folder only."""
    from classifier.splits import DataError, read_unlabelled

    with pytest.raises(DataError, match=r"^\S*nowhere is not a folder of images") as error:
        read_unlabelled(tmp_path / "nowhere", ["a"])
    assert "predict_dir" not in str(error.value)


@pytest.mark.slow
def test_a_run_without_a_logger_resumes_in_its_folder(image_folder: Path, tmp_path: Path) -> None:
    """Without a logger the run folder is default_root_dir; resuming from its last.ckpt
    continues there (it was refused as a folder holding other runs' files)."""
    from tests.conftest import run_cli

    os.chdir(tmp_path)
    options = ["--trainer.logger", "false", "--trainer.default_root_dir", "solo"]
    run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1", *options))
    resumed: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.max_epochs", "2", *options),
        "--ckpt_path",
        "last",
    )
    assert resumed.trainer.current_epoch == 2
    assert (tmp_path / "solo" / "config_resume_1.yaml").is_file()
    assert resumed.trainer.checkpoint_callback.best_model_score is not None
