"""End to end through the real CLI: fit, then test and predict from the checkpoint alone."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import CONF, REPO, classifier_process, make_folder, run_cli, tiny


def _run_folder(cli: object) -> Path:
    return Path(cli.trainer.log_dir)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_fit_then_test_and_predict_from_checkpoint_alone(image_folder: Path) -> None:
    cli = run_cli(*tiny("fit", image_folder))
    run = _run_folder(cli)
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["model_name"] == "test_resnet"
    assert (run / "val_per_class.csv").is_file()

    # No --config: the checkpoint says which model, classes and data it needs.
    tested = run_cli("test", "--ckpt_path", str(best))
    metrics = tested.trainer.callback_metrics  # type: ignore[attr-defined]
    assert {"test/top1", "test/balanced_acc", "test/f1_macro", "test/loss"} <= set(metrics)
    rows = list(csv.DictReader((_run_folder(tested) / "test_per_class.csv").open()))
    assert [r["class"] for r in rows] == ["cat", "dog", "fox"]
    assert sum(int(r["support"]) for r in rows) == 18

    predicted = run_cli(
        "predict", "--ckpt_path", str(best), "--data.predict_dir", str(image_folder / "val")
    )
    table = list(csv.DictReader((_run_folder(predicted) / "predictions.csv").open()))
    assert len(table) == 18
    assert {"path", "predicted", "confidence", "true", "top1_class", "top3_prob"} <= set(table[0])
    assert {r["true"] for r in table} == {"cat", "dog", "fox"}
    assert all(r["predicted"] == r["top1_class"] for r in table)
    probs = [sum(float(r[f"top{i}_prob"]) for i in (1, 2, 3)) for r in table]
    assert all(abs(p - 1) < 1e-4 for p in probs)

    # top_k is the writer's one option, as the README shows it.
    fewer = run_cli(
        "predict",
        "--ckpt_path",
        str(best),
        "--data.predict_dir",
        str(image_folder / "val"),
        "--trainer.callbacks+=classifier.PredictionWriter",
        "--trainer.callbacks.top_k",
        "2",
    )
    header = next(csv.reader((_run_folder(fewer) / "predictions.csv").open()))
    assert "top2_class" in header and "top3_class" not in header


@pytest.mark.slow
def test_runs_never_overwrite_each_other(image_folder: Path) -> None:
    args = tiny("fit", image_folder, "--trainer.max_epochs", "1")
    first, second = _run_folder(run_cli(*args)), _run_folder(run_cli(*args))
    assert first != second
    assert (first / "config.yaml").is_file() and (second / "config.yaml").is_file()


@pytest.mark.slow
def test_trained_model_beats_chance(folder_factory) -> None:  # type: ignore[no-untyped-def]
    data = folder_factory(counts={"train": 40, "val": 12, "test": 12})
    cli = run_cli(*tiny("fit", data, "--trainer.max_epochs", "4", "--test_after_fit", "true"))
    top1 = float(cli.trainer.callback_metrics["test/top1"])  # type: ignore[attr-defined]
    assert top1 >= 0.8, f"test top1 {top1:.2f}; chance is 0.33"


def test_unknown_model_name_lists_close_names(image_folder: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet5O'.*resnet50"):
        run_cli(*tiny("fit", image_folder, "--model.model_name", "resnet5O"))


def test_print_config_is_reproducible(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*tiny("fit", image_folder, "--model.lr", "0.02", "--print_config"))
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["lr"] == 0.02
    assert printed["data"]["data_dir"] == str(image_folder)


@pytest.mark.slow
def test_installed_command_runs_as_a_subprocess() -> None:
    for command in (
        [str(Path(sys.executable).parent / "classifier")],
        [sys.executable, "-m", "classifier"],
    ):
        result = subprocess.run(
            [*command, "fit", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert result.returncode == 0, result.stderr
        assert "--model.model_name" in result.stdout
        assert "any timm model name" in result.stdout
    export = subprocess.run(
        [str(Path(sys.executable).parent / "classifier-export"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert export.returncode == 0 and "--ckpt_path" in export.stdout


@pytest.mark.slow
def test_a_command_leaves_the_process_warning_filters_alone(image_folder: Path) -> None:
    import warnings

    import classifier.cli  # noqa: F401 (import-time filters are not the command's)

    before = list(warnings.filters)
    run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    assert not [f for f in warnings.filters if f not in before]


def test_invalid_value_names_the_argument(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run_cli(*tiny("fit", image_folder, "--data.sampler", "balanced"))
    err = capsys.readouterr().err
    assert "sampler" in err and "balanced" in err


@pytest.mark.slow
def test_sampler_seed_is_the_runs_seed_and_recorded(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")  # no hidden input: the environment is ignored
    base = tiny("fit", image_folder, "--trainer.max_epochs", "1")
    unseeded: Any = run_cli(*base, "--seed_everything", "false")
    assert unseeded.datamodule.train_sampler.seed == 0
    cli: Any = run_cli(*base, "--seed_everything", "7")
    assert cli.datamodule.train_sampler.seed == 7
    assert yaml.safe_load((_run_folder(cli) / "config.yaml").read_text())["data"]["seed"] == 7
    own: Any = run_cli(*base, "--data.seed", "5")
    assert own.datamodule.train_sampler.seed == 5
    assert not torch.equal(own.datamodule.train_sampler.drawn, cli.datamodule.train_sampler.drawn)


def test_only_documented_environment_variables_are_read() -> None:
    for path in (REPO / "classifier").glob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "environ" in code or "getenv" in code:
                documented = any(
                    name in code
                    for name in ("CLASSIFIER_", "ENV_ALLOWED", "PYTHONSAFEPATH", "WANDB_PROJECT")
                )
                assert documented or "``" in code, f"{path.name}:{number}: {line.strip()}"


@pytest.mark.slow
def test_evaluating_a_run_is_quiet_and_writes_beside_it(image_folder: Path) -> None:
    """What a newcomer sees from ``classifier test --ckpt_path``: no advertising, no warnings
    about Lightning's internals, results in ``<run>/test/`` (numbered when repeated)."""
    cli: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    run = _run_folder(cli).resolve()
    best = str(run / "checkpoints" / "best.ckpt")
    exe = str(Path(sys.executable).parent / "classifier")
    result = subprocess.run(
        [exe, "test", "--ckpt_path", best], capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Tip:" not in output and "Warning" not in output, output
    assert f"Results: {run / 'test'}" in output
    assert (run / "test" / "test_per_class.csv").is_file()
    assert "<h3>Test (test/)</h3>" in (run / "report.html").read_text()  # refreshed by test
    again: Any = run_cli("validate", "--ckpt_path", best)
    assert _run_folder(again).resolve() == run / "validate"
    assert _run_folder(run_cli("validate", "--ckpt_path", best)).resolve() == run / "validate_2"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.startswith("classifier ") and "lightning" in version.stdout


@pytest.mark.slow
def test_the_command_exits_normally_keeping_what_callbacks_left_in_open_files(
    image_folder: Path, tmp_path: Path
) -> None:
    """A callback that writes to a file it never closes: the interpreter's normal exit flushes
    it (a forced ``os._exit`` kept 0 of its bytes)."""
    exe = str(Path(sys.executable).parent / "classifier")
    target = tmp_path / "left_open.txt"
    env = {**os.environ, "CLASSIFIER_ALLOWED_CLASS_PATHS": "tests.", "PYTHONPATH": str(REPO)}
    command = [exe, *tiny("fit", image_folder, "--trainer.max_epochs", "1")]
    command += ["--trainer.callbacks+=tests.probes.LeaveOpen", f"--trainer.callbacks.path={target}"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert target.read_text() == "written at fit end"


def test_the_installed_command_reports_a_user_error_with_status_1(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "classifier")
    result = subprocess.run(
        [exe, "fit", "--data.data_dir", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in result.stderr


def test_contradicting_trainer_settings_are_one_line(tmp_path: Path) -> None:
    """Lightning refuses a progress bar callback with ``enable_progress_bar false``."""
    config = REPO / "configs" / "quickstart.yaml"
    data = make_folder(tmp_path / "data", counts={"train": 2, "val": 1})
    result = classifier_process(
        "validate", "--config", str(config), "--data.data_dir", str(data),
        "--trainer.enable_progress_bar", "false", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: " in result.stderr and "RichProgressBar" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fit", "--config", str(CONF / "tiny.yaml"), "--data.decode", "gpu"], "data.decode"),
        (["fit", "--config", str(CONF / "tiny.yaml"), "--model.lr", "abc"], "model.lr"),
        (["fit", "--nope", "1"], "unrecognized arguments: --nope"),
        (["fitt"], "invalid choice: 'fitt'"),
    ],
)
def test_a_bad_option_is_one_error_line_not_the_usage_text(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_attacks import run_entry

    code, err = run_entry(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err[:3000]
    assert "--help)" in err


def test_python_m_classifier_names_the_command_in_its_hint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "classifier", "fit", "--nope", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("(see classifier fit --help)"), result.stderr


def test_the_packages_own_warnings_are_one_line() -> None:
    """A warning of ours says what to change; a command shows it as one ``warning:`` line,
    without the file, line number and source line Python adds. Other libraries' keep Python's
    format, and the process's formatter is back when the command ends."""
    import warnings

    import classifier
    from classifier.cli import console

    ours = str(Path(classifier.__file__).parent / "health.py")
    before = warnings.formatwarning
    with console("fit"):
        mine = warnings.formatwarning("near copies across splits", UserWarning, ours, 633)
        theirs = warnings.formatwarning("from elsewhere", UserWarning, "/elsewhere/lib.py", 7)
    assert mine == "warning: near copies across splits\n"
    assert theirs.startswith("/elsewhere/lib.py:7: UserWarning: from elsewhere")
    assert warnings.formatwarning is before
