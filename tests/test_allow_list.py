"""Attacks on the second code-execution promise: a config never imports a module outside the
allow-list, whatever route names it (the checkpoint attacks are in test_attacks.py).

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

from classifier.safety import UnsafeConfigError
from tests.conftest import REPO, run_cli, tiny
from tests.test_attacks import assert_one_error_line, run_entry

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
    ["lightning.pytorch.cli.os.system", "classifier.file_io.os.umask", "classifier.cli.sys.exit"],
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
