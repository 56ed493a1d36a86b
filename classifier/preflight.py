"""Checks ``classifier fit`` makes before it writes anything: the run folder is its own, and a
checkpoint it resumes from belongs to this experiment.

A resumed ``fit`` continues in the run folder its checkpoint came from.

Lightning gives every ``fit`` a new logger version, so a run resumed from
``<run>/checkpoints/last.ckpt`` would write into ``version_<n+1>``: its ``ModelCheckpoint`` then
finds another folder than the one its state names and drops the best score and path
("dirpath has changed"), and ``best.ckpt``, the test after fit, the calibration and the export
would come from the resumed epochs only. Here the logger's version is pinned to the checkpoint's
run folder instead, so the resumed run is the same run: its best checkpoint is the one the
uninterrupted run would have picked.

Only a run folder of this config's own logger is continued (``save_dir/name/<version>``, found
as the path says, no links), so a checkpoint from elsewhere never makes a run write there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from classifier.arguments import CKPT_KEYWORDS
from classifier.checkpoint import CheckpointError, load_checkpoint
from classifier.errors import ConfigError, printable
from classifier.files import run_of_checkpoint


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


def continue_run(config: Any) -> Path | None:
    """Pin the logger of a ``fit`` config resuming from ``<run>/checkpoints/<file>.ckpt`` to
    ``<run>``, when ``<run>`` is a version folder of that logger and no version is set; the
    run folder continued, or ``None``."""
    ckpt = config.get("ckpt_path")
    if not ckpt or str(ckpt) in CKPT_KEYWORDS:
        return None
    run = run_of_checkpoint(Path(ckpt))
    logger = config.trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    args = getattr(logger, "init_args", None)
    if run is None or args is None or args.get("version") is not None:
        return None
    save_dir, name = args.get("save_dir"), args.get("name")
    if not isinstance(save_dir, str) or not isinstance(name, (str, type(None))):
        return None
    if os.path.abspath(run.parent) != os.path.abspath(Path(save_dir) / (name or "")):
        return None
    if run.parent.is_symlink():  # the logger's folder leads elsewhere: a new run folder there
        return None
    _refuse_links(run)
    args.version = run.name
    rank_zero_info(printable(f"Resuming run {run} in place"))
    return Path(os.path.abspath(run))


def _refuse_links(run: Path) -> None:
    """Refuse to continue in ``run`` if it (or its ``checkpoints/``) holds a symbolic link:
    Lightning's loggers write ``hparams.yaml`` and ``metrics.csv`` through links, so a planted
    one would make the resumed run write outside its folder.

    Raises:
        ConfigError: naming the first link.
    """
    for folder in (run, run / "checkpoints"):
        links = sorted(e.name for e in os.scandir(folder) if e.is_symlink())
        if links:
            raise ConfigError(
                printable(
                    f"the run folder {run} holds a symbolic link ({folder.name}/{links[0]}), "
                    "and a resumed run writes into that folder; remove the link, or copy the "
                    "checkpoint out of the run folder to resume into a new one"
                )
            )


def keep_earlier_files(run: Path, callbacks: Sequence[Any]) -> None:
    """Before a resumed run writes into ``run``: move aside what it would replace. Lightning's
    ``CSVLogger`` deletes an existing ``metrics.csv``; the resolved ``config.yaml`` of the first
    start is kept and this start's is saved beside it."""
    metrics = run / "metrics.csv"
    if metrics.is_file() and not metrics.is_symlink():
        metrics.rename(_free(run, "metrics_before_resume", ".csv"))
    for callback in callbacks:
        name = getattr(callback, "config_filename", None)
        if isinstance(name, str) and os.path.lexists(run / name):
            stem, suffix = os.path.splitext(name)
            callback.config_filename = _free(run, f"{stem}_resume", suffix).name


def _free(run: Path, stem: str, suffix: str) -> Path:
    """``run/<stem>_<k><suffix>`` with the first ``k`` not taken."""
    k = 1
    while os.path.lexists(run / f"{stem}_{k}{suffix}"):
        k += 1
    return run / f"{stem}_{k}{suffix}"
