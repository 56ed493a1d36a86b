"""Attacks on the two code-execution promises: a checkpoint never runs code, whatever route names
it, and a config never imports a module outside the allow-list, whatever route names it.

Each attempt must leave no marker file behind and end in one ``error:`` line, no traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from classifier.checkpoint import CheckpointError
from classifier.safety import UnsafeConfigError
from tests.conftest import CONF, REPO, run_cli, tiny

TINY = str(CONF / "tiny.yaml")


class Payload:
    """Unpickling this runs ``exec``: writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


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
    from classifier.export_command import main as export_main
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


# --- 2. The allow-list is enforced where a name becomes an object -------------------------------


@pytest.fixture
def evil_module(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable package outside the allow-list that writes the marker on import."""
    package = tmp_path / "site" / "evilpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(f"""
            open({str(marker)!r}, "w").close()
            from lightning.pytorch.callbacks import Callback
            class Evil(Callback):
                pass
            def hook(*args):
                pass
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return "evilpkg"


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


ROUTES: dict[str, Callable[[Path], list[str]]] = {
    "class_path in YAML": lambda t: [
        "--config",
        _write(t, "a.yaml", "trainer:\n  callbacks:\n    - class_path: evilpkg.Evil\n"),
    ],
    "bare class string in YAML": lambda t: [
        "--config",
        _write(t, "b.yaml", "trainer:\n  callbacks: [evilpkg.Evil]\n"),
    ],
    "list value on the CLI": lambda t: ["--trainer.callbacks=[evilpkg.Evil]"],
    "appended on the CLI": lambda t: ["--trainer.callbacks+=evilpkg.Evil"],
    "inline config": lambda t: ['--trainer.callbacks=[{"class_path": "evilpkg.Evil"}]'],
    "logger": lambda t: ["--trainer.logger=evilpkg.Evil"],
    "group config file": lambda t: [
        "--trainer",
        _write(t, "trainer.yaml", "callbacks: [evilpkg.Evil]\nmax_epochs: 1\n"),
    ],
    "config naming a config": lambda t: [
        "--config",
        _write(
            t,
            "outer.yaml",
            f"trainer: {_write(t, 'inner.yaml', 'callbacks: [evilpkg.Evil]')}\n",
        ),
    ],
    "Callable argument": lambda t: [
        "--config",
        _write(
            t,
            "c.yaml",
            """
            trainer:
              callbacks:
                - class_path: lightning.pytorch.callbacks.LambdaCallback
                  init_args:
                    on_fit_start: evilpkg.hook
            """,
        ),
    ],
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_foreign_module_is_never_imported(
    route: str,
    evil_module: str,
    marker: Path,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    os.environ["CLASSIFIER_ALLOWED_CLASS_PATHS"] = ""  # restored by the autouse fixture
    code, err = run_entry(capsys, *tiny("fit", image_folder), *ROUTES[route](tmp_path))
    assert not marker.exists(), route
    assert "evilpkg" not in sys.modules
    assert_one_error_line(code, err, "evilpkg", "CLASSIFIER_ALLOWED_CLASS_PATHS")


def test_environment_variables_are_checked_too(
    evil_module: str,
    marker: Path,
    image_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CLASSIFIER_ALLOWED_CLASS_PATHS", "")
    monkeypatch.setenv("JSONARGPARSE_DEFAULT_ENV", "true")
    monkeypatch.setenv("PL_FIT__TRAINER__CALLBACKS", "[evilpkg.Evil]")
    code, err = run_entry(capsys, *tiny("fit", image_folder))
    assert not marker.exists()
    assert_one_error_line(code, err, "evilpkg")


@pytest.mark.parametrize(
    "target",
    ["lightning.pytorch.cli.os.system", "classifier.files.os.umask", "classifier.cli.sys.exit"],
)
def test_attribute_chains_leaving_an_allowed_package_are_refused(
    target: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(
        tmp_path,
        "chain.yaml",
        f"""
        trainer:
          callbacks:
            - class_path: lightning.pytorch.callbacks.LambdaCallback
              init_args:
                on_fit_start: {target}
        """,
    )
    code, err = run_entry(capsys, *tiny("fit", image_folder), "--config", config)
    assert_one_error_line(code, err, "outside the allowed packages")


def test_any_typed_values_are_never_instantiated(
    image_folder: Path,
    tmp_path: Path,
    marker: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``class_path`` inside an ``Any`` value (``console_kwargs``) was called with the
    config's arguments: any importable function ran. Even a trusted package's is not called."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "trustedfn.py").write_text(
        f"def touch(**kwargs):\n    open({str(marker)!r}, 'w').close()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("CLASSIFIER_ALLOWED_CLASS_PATHS", "trustedfn")
    for target in ("trustedfn.touch", "pytorch_lightning.__setup__._load_py_module"):
        config = _write(
            tmp_path,
            "any.yaml",
            f"""
            trainer:
              callbacks:
                - class_path: lightning.pytorch.callbacks.RichProgressBar
                  init_args:
                    console_kwargs:
                      x: {{class_path: {target}, init_args: {{path: x, name: e, location: x}}}}
            """,
        )
        with contextlib.suppress(TypeError):  # rich's Console refuses the unknown ``x``
            run_entry(capsys, *tiny("fit", image_folder), "--config", config)
        assert not marker.exists(), target


def test_dotted_values_that_are_not_classes_pass(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out: list[str] = []
    code, _ = run_entry(
        capsys,
        *tiny("fit", image_folder),
        "--trainer.logger.init_args.save_dir=my.runs",
        "--trainer.logger.init_args.name=v1.2",
        "--print_config",
        out=out,
    )
    assert code == 0 and "save_dir: my.runs" in out[0] and "name: v1.2" in out[0]


def test_allow_list_follows_the_environment_between_runs(
    tmp_path: Path,
    image_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = tmp_path / "site" / "trusted"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from lightning.pytorch.callbacks import Callback\nclass Cb(Callback):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    args = [*tiny("fit", image_folder), "--trainer.callbacks+=trusted.Cb", "--print_config"]
    monkeypatch.setenv("CLASSIFIER_ALLOWED_CLASS_PATHS", "trusted")
    assert run_entry(capsys, *args)[0] == 0
    monkeypatch.setenv("CLASSIFIER_ALLOWED_CLASS_PATHS", "")
    code, err = run_entry(capsys, *args)
    assert_one_error_line(code, err, "trusted.Cb")


def test_python_m_does_not_import_from_the_current_folder(
    image_folder: Path, tmp_path: Path
) -> None:
    import subprocess

    work = tmp_path / "shared_repo"
    work.mkdir()
    marker = work / "MARKER"
    (work / "helpers.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (work / "run.yaml").write_text("trainer:\n  callbacks: [helpers.Cb]\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLASSIFIER_ALLOWED_CLASS_PATHS": "helpers"}
    result = subprocess.run(
        [sys.executable, "-m", "classifier", *tiny("fit", image_folder), "--config", "run.yaml"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert not marker.exists(), result.stderr[-2000:]


@pytest.mark.slow
def test_foreign_class_path_in_checkpoint_hparams_is_refused(
    image_folder: Path, tmp_path: Path
) -> None:
    cli: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    checkpoint = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    checkpoint["hyper_parameters"]["optimizer"] = {"class_path": "os.system", "init_args": {}}
    path = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeConfigError, match=r"os\.system"):
        run_cli("test", "--ckpt_path", str(path))
