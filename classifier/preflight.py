"""Checks ``classifier fit`` makes before it writes anything: the run folder is its own, and a
checkpoint it resumes from belongs to this experiment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from classifier.checkpoint import CheckpointError, load_checkpoint
from classifier.errors import ConfigError


def check_new_run_folder(folder: Path, default_root: Path) -> None:
    """Refuse a run folder that already holds files: another run's results would be mixed
    with (or replaced by) this one's.

    Raises:
        ConfigError: ``folder`` exists and is not empty, or is a symlink, or there is no
            logger and every run would share ``default_root``.
    """
    if folder.is_symlink():
        raise ConfigError(f"the run folder {folder} is a symbolic link; choose a real folder.")
    if os.path.abspath(folder) == os.path.abspath(default_root) and folder.is_dir():
        entries = [e for e in os.listdir(folder) if not e.startswith(".")]
        if entries:
            raise ConfigError(
                f"without a logger every run writes into {folder}, which holds other runs' "
                "files; set a logger (the shipped configs do) or a new --trainer.default_root_dir."
            )
        return
    if folder.is_dir():
        found = sorted(os.listdir(folder))
        if found:
            shown = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "")
            raise ConfigError(
                f"the run folder {folder} already holds another run's files ({shown}); leave "
                "the logger's version unset (a new one is chosen) or pick another one."
            )


def check_config_files(args: list[str]) -> None:
    """Refuse a ``--config`` that is not a regular file (a FIFO would hang the parser).

    Raises:
        ConfigError: the named config exists and is a FIFO, device or folder.
    """
    import stat

    for i, arg in enumerate(args):
        name = args[i + 1] if arg in {"-c", "--config"} and i + 1 < len(args) else None
        if arg.startswith("--config="):
            name = arg.split("=", 1)[1]
        if name is None:
            continue
        try:
            kind = os.stat(name).st_mode
        except OSError:
            continue  # not a file: jsonargparse takes inline YAML or reports the name
        if not stat.S_ISREG(kind):
            raise ConfigError(f"--config {name} is not a regular file.")


def check_inside(dirpath: object, folder: Path, owner: str) -> None:
    """Refuse a callback's ``dirpath`` outside the run folder ``folder`` (a config from
    someone else must not make checkpoints overwrite files elsewhere).

    Raises:
        ConfigError: ``dirpath`` is set and lies outside ``folder``.
    """
    if dirpath in (None, ""):
        return
    inside = os.path.realpath(str(dirpath)) + os.sep
    if not inside.startswith(os.path.realpath(folder) + os.sep):
        raise ConfigError(
            f"{owner} dirpath {dirpath} is outside the run folder {folder}; leave it unset "
            "(checkpoints go to <run>/checkpoints)."
        )


def check_resume(
    ckpt: str, class_names: list[str], data_dir: str, found_as_last: bool
) -> dict[str, Any]:
    """The checkpoint a ``fit`` resumes from, checked against this run's data.

    Args:
        ckpt: the checkpoint file.
        class_names: the classes of this run's ``train/`` folder.
        data_dir: this run's data folder.
        found_as_last: ``--ckpt_path last`` found the file (then it must also come from the
            same data folder: the newest run of a config may be another experiment's).

    Raises:
        CheckpointError: the checkpoint was trained on other classes (or, for ``last``, on
            another data folder).
    """
    checkpoint = load_checkpoint(ckpt)
    theirs = checkpoint.get("class_names") or checkpoint["hyper_parameters"].get("class_names")
    if theirs is not None and list(theirs) != list(class_names):
        raise CheckpointError(
            f"{ckpt} was trained on classes {_short(theirs)}, but {data_dir}/train has "
            f"{_short(class_names)}; resume with the data it was trained on, or start a new "
            "run without --ckpt_path."
        )
    trained_on = checkpoint["datamodule_hyper_parameters"].get("data_dir")
    if found_as_last and trained_on is not None and not _same_folder(trained_on, data_dir):
        raise CheckpointError(
            f"--ckpt_path last found {ckpt}, trained on {trained_on}, not {data_dir}; pass the "
            "checkpoint file to resume it anyway, or start a new run without --ckpt_path."
        )
    return checkpoint


def _same_folder(first: str, second: str) -> bool:
    try:
        return Path(first).resolve() == Path(second).resolve()
    except OSError:
        return False


def _short(names: list[str]) -> str:
    return repr(names) if len(names) <= 6 else f"{names[:6]!r}... ({len(names)} classes)"


def refuse_half_weights(precision: object) -> None:
    """Refuse ``bf16-true`` and ``16-true``: they turn the whole module to half precision, the
    metrics' running sums and counts included (bfloat16 counts go wrong above 256)."""
    if str(precision) in ("bf16-true", "16-true"):
        raise ConfigError(
            f"trainer.precision {precision} keeps the metrics' counts in half precision, which "
            "miscounts: use bf16-mixed (or 16-mixed), the same speed on tensor cores"
        )


def refuse_spawn(strategy: Any) -> None:
    """Refuse the spawn-method strategies (``ddp_spawn``): Lightning hands the trained weights
    back to the parent through a temporary pickle file and its progress bar deadlocks there;
    ``ddp`` (a process per device, started like the command) does the same work."""
    name = strategy if isinstance(strategy, str) else str(getattr(strategy, "class_path", ""))
    start = getattr(getattr(strategy, "init_args", None), "start_method", None)
    if "spawn" in name or start == "spawn":
        raise ConfigError(
            f"trainer.strategy {name} (ddp_spawn) is not supported: use --trainer.strategy ddp "
            "(the default for several devices), which runs the same training."
        )
