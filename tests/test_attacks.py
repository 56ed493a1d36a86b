"""Attacks on the two code-execution promises: a checkpoint never runs code, whatever route names
it, and a config never imports a module outside the allow-list, whatever route names it.

Each attempt must leave no marker file behind and end in one ``error:`` line, no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from classifier.checkpoint import CheckpointError
from tests.conftest import CONF, run_cli, tiny

TINY = str(CONF / "tiny.yaml")


class Payload:
    """Unpickling this runs ``exec``: writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def evil_ckpt(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "payload": Payload(marker)}, path)
    return path


def run_entry(
    capsys: pytest.CaptureFixture[str], *args: str, out: list[str] | None = None
) -> tuple[int, str]:
    """Run the console command in-process; its exit code and stderr (stdout into ``out``)."""
    from classifier.cli import entry

    old = sys.argv
    sys.argv = ["classifier", *args]
    try:
        entry()
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    if out is not None:
        out.append(captured.out)
    return code, captured.err


def assert_one_error_line(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-3000:]
    for needle in needles:
        assert needle in last, last


# --- 1. A checkpoint never executes code --------------------------------------------------------


def _ckpt_routes(image_folder: Path, evil: Path, tmp_path: Path) -> dict[str, list[str]]:
    config = yaml.safe_load(Path(TINY).read_text())
    config["ckpt_path"] = str(evil)
    in_yaml = tmp_path / "with_ckpt.yaml"
    in_yaml.write_text(yaml.safe_dump(config))
    data = ["--data.data_dir", str(image_folder)]
    return {
        "validate": ["validate", "--ckpt_path", str(evil)],
        "predict": ["predict", "--ckpt_path", str(evil), "--data.predict_dir", str(image_folder)],
        "fit --ckpt_path": ["fit", "--config", TINY, *data, "--ckpt_path", str(evil)],
        "fit --ckpt_path=": ["fit", "--config", TINY, *data, f"--ckpt_path={evil}"],
        "test, ckpt_path in YAML": ["test", "--config", str(in_yaml), *data],
        "fit, ckpt_path in YAML": ["fit", "--config", str(in_yaml), *data],
    }


@pytest.mark.parametrize(
    "route",
    [
        "validate",
        "predict",
        "fit --ckpt_path",
        "fit --ckpt_path=",
        "test, ckpt_path in YAML",
        "fit, ckpt_path in YAML",
    ],
)
def test_pickled_checkpoint_never_runs_by_any_route(
    route: str,
    image_folder: Path,
    evil_ckpt: Path,
    marker: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _ckpt_routes(image_folder, evil_ckpt, tmp_path)[route]
    code, err = run_entry(capsys, *args)
    assert not marker.exists(), route
    assert_one_error_line(code, err, "cannot load checkpoint", "evil.ckpt")
    assert "can still be loaded" not in err and "could run code" in err  # no advice to unpickle


@pytest.mark.parametrize(
    "extra",
    [
        ["--ckpt", "EVIL"],  # abbreviations are off: --ckpt is not --ckpt_path
        ["--ckpt_pat", "EVIL"],
        ["--ckpt_path", "EVIL", "--weights_only", "false"],  # no such option
        ["--ckpt_path", "EVIL", "--weights_only=false"],
    ],
)
def test_abbreviations_and_weights_only_are_refused(
    extra: list[str],
    image_folder: Path,
    evil_ckpt: Path,
    marker: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = [str(evil_ckpt) if a == "EVIL" else a for a in extra]
    code, err = run_entry(capsys, *tiny("fit", image_folder), *extra)
    assert not marker.exists()
    assert_one_error_line(code, err, "unrecognized arguments")


def test_weights_only_false_in_a_config_is_refused(
    image_folder: Path, evil_ckpt: Path, marker: Path, tmp_path: Path, capsys: Any
) -> None:
    config = tmp_path / "unsafe.yaml"
    config.write_text(f"ckpt_path: {evil_ckpt}\nweights_only: false\n")
    code, err = run_entry(capsys, *tiny("fit", image_folder), "--config", str(config))
    assert not marker.exists()
    assert code != 0 and "Traceback" not in err
    assert "weights_only" in err


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/evil.ckpt", "https://example.invalid/x.ckpt"])
@pytest.mark.parametrize("command", ["fit", "test"])
def test_remote_checkpoints_are_refused_without_a_download(
    url: str, command: str, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny(command, image_folder) if command == "fit" else [command]
    code, err = run_entry(capsys, *args, "--ckpt_path", url)
    assert_one_error_line(code, err, "remote checkpoints are not loaded")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_fifo_or_folder_checkpoint_fails_at_once(
    kind: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.ckpt"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    for args in (tiny("fit", image_folder), ["validate"]):
        code, err = run_entry(capsys, *args, "--ckpt_path", str(path))
        assert_one_error_line(code, err, "not a regular file")


def test_export_and_python_api_refuse_pickles(
    evil_ckpt: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from classifier.export import main as export_main
    from classifier.model import ImageClassifier

    with pytest.raises(SystemExit):
        export_main(["--ckpt_path", str(evil_ckpt)])
    assert_one_error_line(1, capsys.readouterr().err, "cannot load checkpoint")
    with pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        ImageClassifier.load_from_checkpoint(evil_ckpt, weights_only=False)
    with pytest.raises(CheckpointError, match="remote"):
        ImageClassifier.load_from_checkpoint("https://example.invalid/x.ckpt")
    assert not marker.exists()


@pytest.mark.slow
def test_resume_from_a_real_checkpoint_still_works(image_folder: Path) -> None:
    cli: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    resumed: Any = run_cli(*tiny("fit", image_folder, "--ckpt_path", str(last)))
    assert (
        resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 8
    )  # 36 images: 4 batches of 8
