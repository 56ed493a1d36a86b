"""Regression tests for the second round of hostile attacks (issue #19): each failed on the
code before its fix. Rows 6 and 7 (the cache) are in test_prescan.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import CONF, REPO, make_folder, run_cli, tiny
from tests.test_attacks import assert_one_error_line, run_entry

EXE = str(Path(sys.executable).parent / "classifier")


def _env() -> dict[str, str]:
    return {**os.environ, "CLASSIFIER_ALLOWED_CLASS_PATHS": "tests.", "PYTHONPATH": str(REPO)}


# 1. Child interpreters never import from the working folder -----------------------------------


@pytest.mark.slow
def test_spawned_children_do_not_import_a_planted_module(
    image_folder: Path, tmp_path: Path
) -> None:
    """A child started with ``python -c`` (spawn-method processes) puts the working folder
    first on its path; the command's children never do."""
    marker = tmp_path / "PLANTED_RAN"
    (tmp_path / "multiprocessing.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    command = [EXE, *tiny("fit", image_folder, "--trainer.max_epochs", "1")]
    command += ["--trainer.callbacks+=tests.probes.SpawnChild"]
    result = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert not marker.exists(), result.stderr[-2000:]
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_spawn_is_refused_in_one_line(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny("fit", image_folder, "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2")
    code, err = run_entry(capsys, *args)
    assert_one_error_line(code, err, "ddp_spawn", "--trainer.strategy ddp")


def test_the_command_gives_its_children_a_safe_path() -> None:
    from classifier.safety import no_working_folder_imports

    before = os.environ.get("PYTHONSAFEPATH")
    with no_working_folder_imports():
        child = subprocess.run(
            [sys.executable, "-c", "import sys; print(sys.flags.safe_path)"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert child.stdout.strip() == "True"
    assert os.environ.get("PYTHONSAFEPATH") == before  # restored: no hidden global change


# 2. python -m classifier: Python's own lookup comes first; the docs say so and how --------


def test_python_m_with_a_safe_path_ignores_a_planted_classifier(tmp_path: Path) -> None:
    marker = tmp_path / "PLANTED_RAN"
    (tmp_path / "classifier.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {**_env(), "PYTHONSAFEPATH": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "classifier", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not marker.exists()
    trust = (REPO / "docs" / "trust.md").read_text()  # the README's Trust section links there
    assert "does not search the current folder" not in trust
    assert "PYTHONSAFEPATH=1 python -m classifier" in trust


# 3. Reading a run folder follows no link ------------------------------------------------------


def test_the_report_embeds_no_file_a_planted_link_points_at(tmp_path: Path) -> None:
    from classifier import report_items
    from classifier.html_report import write_report

    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n-----BEGIN OPENSSH PRIVATE KEY----- SECRET")
    run = tmp_path / "run"
    run.mkdir()
    (run / "loss_history.png").symlink_to(secret)
    os.mkfifo(run / "metrics_history.png")  # a FIFO: never opened for a blocking read
    report_items.figure(run / "loss_history.png", "curves", "loss")
    report_items.figure(run / "metrics_history.png", "curves", "metrics")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report_items.note(elsewhere, "summary", "summary/model", "model LEAKED-NAME")
    report_items.cards(elsewhere, "summary", "summary/val", {"top1": 0.123456789}, "Validation")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / report_items.MANIFEST).symlink_to(elsewhere / report_items.MANIFEST)
    import base64

    page = write_report(run).read_text()
    assert base64.b64encode(secret.read_bytes())[:24].decode() not in page
    assert 'id="curves"' not in page  # neither image was read
    page = write_report(linked).read_text()  # a linked manifest is not read
    assert "LEAKED-NAME" not in page and "0.1235" not in page


@pytest.mark.slow
def test_evaluation_never_writes_through_a_linked_run_folder(
    image_folder: Path, tmp_path: Path
) -> None:
    fit: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    run = Path(fit.trainer.log_dir)
    elsewhere = tmp_path / "elsewhere"
    (run / "checkpoints").rename(elsewhere)
    (run / "checkpoints").symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.parent.iterdir())
    run_cli("test", "--ckpt_path", str(run / "checkpoints" / "best.ckpt"))
    assert not (run / "test").exists()  # not treated as the run's own checkpoint folder
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == before


# 4. A run folder is never reused --------------------------------------------------------------


@pytest.mark.slow
def test_a_second_fit_into_the_same_folder_is_refused_before_anything_changes(
    image_folder: Path, folder_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    version = ["--trainer.logger.init_args.version", "fixed"]
    first: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1", *version))
    run = Path(first.trainer.log_dir)
    snapshot = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert "metrics.csv" in snapshot and "data_health.json" in snapshot
    other = folder_factory("other", classes=("a", "b", "c"))
    code, err = run_entry(capsys, *tiny("fit", other, "--trainer.max_epochs", "1", *version))
    assert_one_error_line(code, err, "already holds another run's files")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == snapshot


# 5. --ckpt_path last resumes only its own experiment ------------------------------------------


@pytest.mark.slow
def test_last_without_a_config_or_from_another_experiment_is_refused(
    image_folder: Path, folder_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    cats_dogs = folder_factory("cats_dogs", classes=("cat", "dog", "emu"))
    bare = ["fit", "--data.data_dir", str(cats_dogs), "--ckpt_path", "last"]
    code, err = run_entry(capsys, *bare)
    assert_one_error_line(code, err, "--ckpt_path last needs the run's --config")
    code, err = run_entry(capsys, *tiny("fit", cats_dogs), "--ckpt_path", "last")
    assert_one_error_line(code, err, "was trained on classes")
    same_classes = folder_factory("copy", classes=("cat", "dog", "fox"))
    code, err = run_entry(capsys, *tiny("fit", same_classes), "--ckpt_path", "last")
    assert_one_error_line(code, err, "trained on", "not")


@pytest.mark.parametrize(
    ("options", "runs"),
    [
        (["--trainer.logger.init_args.save_dir", "elsewhere"], "elsewhere/tiny"),
        (["--trainer.logger.save_dir", "elsewhere"], "elsewhere/tiny"),  # the shorthand
        (["--trainer.logger.init_args.name", "other"], "runs/other"),
    ],
    ids=["save_dir", "save_dir-shorthand", "name"],
)
def test_last_looks_where_the_options_put_the_runs(
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    options: list[str],
    runs: str,
) -> None:
    """Options that move the logger's folder move the search too: the config's own folder
    (``runs/tiny``, another run's) is never resumed from (it used to be the only one read)."""
    decoy = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(b"another run's checkpoint")
    args = [*tiny("fit", image_folder, *options), "--ckpt_path", "last"]
    code, err = run_entry(capsys, *args)
    assert_one_error_line(code, err, f"no checkpoints/last.ckpt under {Path(runs)}")
    own = tmp_path / runs / "version_2" / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"this run's checkpoint")
    os.utime(own, (1, 1))  # older than the decoy: found by place, not by age
    code, err = run_entry(capsys, *args)
    assert f"Resuming from {Path(runs)}" in caplog.text
    assert_one_error_line(code, err, str(own.relative_to(tmp_path)))  # it is no checkpoint


@pytest.mark.slow
def test_last_resumes_the_run_of_the_options_not_the_configs_folder(
    image_folder: Path, tmp_path: Path
) -> None:
    """Run A in the config's ``runs/``, run B in another save_dir; B's command resumed with
    ``--ckpt_path last`` continues B (it used to resume A's newest-looking checkpoint)."""
    run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    elsewhere = str(tmp_path / "runsB")
    b = tiny("fit", image_folder, "--trainer.logger.init_args.save_dir", elsewhere)
    first: Any = run_cli(*b, "--trainer.max_epochs", "1")
    resumed: Any = run_cli(*b, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert Path(resumed.trainer.log_dir).resolve() == Path(first.trainer.log_dir).resolve()
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert resumed.config.fit.ckpt_path == str(last)
    assert resumed.trainer.current_epoch == 2


# 8. Predictions keep the row of every file -----------------------------------------------------


@pytest.mark.slow
def test_predict_keeps_rows_of_broken_and_truncated_files(image_folder: Path) -> None:
    import csv

    fit: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    best = fit.trainer.checkpoint_callback.best_model_path
    folder = image_folder / "test"
    good = folder / "cat" / "cat_000.png"
    (folder / "cat" / "broken.png").write_bytes(b"not an image at all")
    (folder / "cat" / "truncated.png").write_bytes(good.read_bytes()[:200])
    cli: Any = run_cli("predict", "--ckpt_path", best, "--data.predict_dir", str(folder))
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "predictions.csv").open()))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == sum(1 for _ in folder.rglob("*.png"))
    for name in ("broken.png", "truncated.png"):
        assert by_name[name]["error"] == "unreadable" and by_name[name]["predicted"] == ""
        assert by_name[name]["true"] == "cat"
    assert by_name["cat_000.png"]["error"] == ""


# 9. Unreadable files are never fatal at evaluation time ---------------------------------------


@pytest.mark.slow
def test_a_corrupt_val_image_without_the_scan_is_counted_not_fatal(image_folder: Path) -> None:
    (image_folder / "val" / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cli: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.max_epochs", "1", "--data.scan", "false"),
        "--trainer.callbacks+=classifier.OnnxExport",
        "--trainer.callbacks.verify_images=100",
    )
    run = Path(cli.trainer.log_dir)
    report = json.loads((run / "export_report.json").read_text())
    assert report["passed"] and report["unreadable"] == 1
    assert report["images"] == sum(1 for _ in (image_folder / "val").rglob("*.png")) - 1
    assert (run / "report.html").is_file()


# 10. classifier-predict --output never writes through a link ----------------------------------


def test_the_onnx_predictor_replaces_a_link_instead_of_writing_through_it(
    tmp_path: Path, exported_model: Path
) -> None:
    from classifier.onnx_predict import main

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    output = tmp_path / "p.csv"
    output.symlink_to(target)
    images = make_folder(tmp_path / "imgs", counts={"test": 2}) / "test"
    main([str(exported_model), str(images), "--output", str(output)])
    assert target.read_text() == "keep me"
    assert not output.is_symlink() and output.read_text().startswith("path,")


# 11. The import policy admits classes and functions of allowed modules, nothing else ----------


@pytest.mark.parametrize(
    "target",
    [
        "torch.optim.optimizer._global_optimizer_pre_hooks.setdefault",
        "lightning.pytorch.callbacks.model_checkpoint.os.__setattr__",
        "lightning.pytorch.callbacks.lambda_function.print",
    ],
)
def test_builtin_and_bound_methods_reached_through_allowed_modules_are_refused(
    target: str, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning.pytorch import callbacks

    called: list[object] = []
    original = callbacks.LambdaCallback.__init__
    args = [
        *tiny("fit", image_folder, "--trainer.max_epochs", "1"),
        "--trainer.callbacks+=lightning.pytorch.callbacks.LambdaCallback",
        f"--trainer.callbacks.on_fit_start={target}",
    ]
    try:
        callbacks.LambdaCallback.__init__ = lambda self, **kw: called.append(kw)  # type: ignore[method-assign]
        code, err = run_entry(capsys, *args)
    finally:
        callbacks.LambdaCallback.__init__ = original  # type: ignore[method-assign]
    assert code != 0 and not called  # refused before anything was built or called
    assert "Traceback" not in err


def test_plain_allowed_functions_and_classes_still_pass() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from classifier.safety import refuse_unsafe_objects

    refuse_unsafe_objects({"a": [1, "x", None, {"b": ModelCheckpoint}]})
    with pytest.raises(Exception, match="not a class or function"):
        refuse_unsafe_objects({"a": {}.setdefault})


# 13. Parsing is bounded -----------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def test_a_yaml_alias_bomb_in_an_any_value_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    bomb = _alias_bomb().replace("\n", "\n          ")
    config = tmp_path / "bomb.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.RichProgressBar\n"
        f"      init_args:\n        console_kwargs:\n          {bomb}\n"
    )
    start = time.perf_counter()
    code, err = run_entry(capsys, "fit", "--config", str(config), "--print_config")
    assert time.perf_counter() - start < 5
    assert_one_error_line(code, err, "alias bomb")
    huge = tmp_path / "huge.yaml"
    huge.write_text("model:\n  model_name: resnet18\n# " + "x" * 2_000_000 + "\n")
    code, err = run_entry(capsys, "fit", "--config", str(huge), "--print_config")
    assert_one_error_line(code, err, "over the limit")


def test_ordinary_anchors_still_work(tmp_path: Path) -> None:
    from classifier.safety import bound_yaml

    bound_yaml()
    from jsonargparse import get_loader

    loaded = get_loader("yaml")("lr: &lr 0.5\nother: *lr\nlist: [*lr, *lr]\n")
    assert loaded == {"lr": 0.5, "other": 0.5, "list": [0.5, 0.5]}


# 14. Output files stay inside the results folder ----------------------------------------------


@pytest.mark.parametrize("name", ["/tmp/x/.bashrc", "../predictions.csv", "sub/p.csv", ".."])
def test_prediction_file_names_outside_the_results_folder_are_refused(name: str) -> None:
    from classifier.errors import ConfigError
    from classifier.prediction_writer import PredictionWriter

    with pytest.raises(ConfigError, match="plain file name"):
        PredictionWriter(filename=name).setup(None, None, "predict")  # type: ignore[arg-type]


def test_a_prediction_file_elsewhere_is_one_error_line(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bashrc = tmp_path / ".bashrc"
    fake_ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, fake_ckpt)
    args = ["predict", "--config", str(CONF / "tiny.yaml"), "--data.predict_dir", str(image_folder)]
    args += ["--trainer.callbacks+=classifier.PredictionWriter"]
    args += [f"--trainer.callbacks.filename={bashrc}"]
    code, err = run_entry(capsys, *args)
    assert_one_error_line(code, err, "plain file name")
    assert not bashrc.exists()
