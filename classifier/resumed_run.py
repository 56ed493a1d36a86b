"""A resumed ``fit`` continues in the run folder its checkpoint came from.

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

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from classifier.arguments import CKPT_KEYWORDS
from classifier.errors import ConfigError, printable
from classifier.file_io import run_of_checkpoint


def continue_run(config: Any) -> Path | None:
    """Pin the logger of a ``fit`` config resuming from ``<run>/checkpoints/<file>.ckpt`` to
    ``<run>``, when ``<run>`` is a version folder of that logger and no version is set (without
    a logger, when ``<run>`` is ``default_root_dir``); the run folder continued, or ``None``."""
    ckpt = config.get("ckpt_path")
    if not ckpt or str(ckpt) in CKPT_KEYWORDS:
        return None
    run = run_of_checkpoint(Path(ckpt))
    logger = config.trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False and run is not None:  # no logger: the run folder is default_root_dir
        root = config.trainer.get("default_root_dir") or "."
        return _continue(run) if os.path.abspath(run) == os.path.abspath(root) else None
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
    args.version = run.name
    return _continue(run)


def _continue(run: Path) -> Path:
    """Continue in ``run`` (refused when it holds a link); its absolute path."""
    _refuse_links(run)
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


class SameRunFolder(Callback):
    """When a run resumes in place, a checkpoint folder its state names another way (``runs``
    then ``/home/me/runs``, or through a link to the same folder) is the same folder: each
    ``ModelCheckpoint`` keeps its best score and path. Lightning compares the two paths as text
    and otherwise drops them ("dirpath has changed"), so ``best.ckpt`` would be picked again from
    the resumed epochs only. (``classifier fit`` adds this when it continues a run folder.)"""

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Before the checkpoint callbacks load their state: name their folders as now."""
        states = checkpoint.get("callbacks")
        if not isinstance(states, dict):
            return
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            state = states.get(callback.state_key)
            saved = state.get("dirpath") if isinstance(state, dict) else None
            now = callback.dirpath
            if (
                isinstance(state, dict)
                and isinstance(saved, str)
                and isinstance(now, str)
                and saved != now
                and os.path.realpath(saved) == os.path.realpath(now)
            ):
                state["dirpath"] = now
