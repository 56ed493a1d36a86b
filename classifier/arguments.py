"""Reading the raw command line before LightningCLI parses it: which subcommand, which
checkpoint; turning a checkpoint's own arguments into the first config layer of an evaluation
command (:func:`checkpoint_config`); and, once the command line is parsed, which earlier run
``--ckpt_path last`` resumes (:func:`resolve_last`).

The raw reading (:func:`subcommand` and friends) needs neither torch nor Lightning.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_info

from classifier.checkpoint import CheckpointError, load_checkpoint
from classifier.errors import printable
from classifier.file_io import run_of_checkpoint
from classifier.safety import refuse_foreign_class_paths

#: Options that end a command before it runs (help, printed config, version).
NO_RUN_OPTIONS = ("-h", "--help", "--print_config", "--version")


def subcommand(args: list[str]) -> str | None:
    """The subcommand: the first argument that is neither an option nor an option's value
    (``classifier -c run.yaml test ...`` is ``test``)."""
    skip = False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in {"-c", "--config"}
            continue
        return arg
    return None


def runs(args: list[str]) -> bool:
    """Whether the command will run, rather than print help, a config or the version (also
    the per-group help such as ``--trainer.help``, and abbreviations such as ``--print_c``)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in NO_RUN_OPTIONS or name.endswith(".help"):
            return False
        if name.startswith("--") and len(name) > 3 and "--print_config".startswith(name):
            return False
    return True


#: Subcommands that evaluate a checkpoint.
EVAL_COMMANDS = {"validate", "test", "predict"}
#: Data arguments a checkpoint stores that the command line sets itself (a link from the model).
LINKED = ("backbone",)
#: ``--ckpt_path`` values Lightning resolves itself.
CKPT_KEYWORDS = {"best", "last", "hpc", "registry"}


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name X`` or ``--name=X`` (the last one given)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def chooses_logger(args: list[str]) -> bool:
    """Whether the command line gives a config (``-c``, ``--config F``, ``--config=F``) or a
    trainer option, which then decides where an evaluation's results go."""
    return any(a in {"-c", "--config"} or a.startswith(("--config=", "--trainer")) for a in args)


def resolve_last(config: Any, configured: bool) -> str | None:
    """Replace ``ckpt_path: last`` of a parsed ``fit`` ``config`` (its config files layered
    with the command line, as jsonargparse parsed them) by the newest ``last.ckpt`` of earlier
    runs of that config; return that file (``None`` when ``last`` was not asked for).

    Each run has its own versioned folder, where Lightning's own ``last`` lookup would search
    only the new, empty one. The runs are looked for where the effective settings put them:
    the first logger's ``save_dir/name`` (a WandB logger's ``save_dir/project``), else
    ``default_root_dir``, whether a config file or an option set them.

    Raises:
        CheckpointError: no config file names the experiment (``configured`` false: the newest
            ``last.ckpt`` under ``runs/`` may be anyone's), the logger's folder cannot be told
            from its arguments, or there is no ``last.ckpt`` under it.
    """
    if str(config.get("ckpt_path")) != "last":
        return None
    if not configured:
        raise CheckpointError(
            "--ckpt_path last needs the run's --config: it resumes the newest last.ckpt under "
            "that config's logger folder. Pass the config, or the checkpoint file itself."
        )
    root, versioned = _run_root(config.trainer)
    pattern = "*/checkpoints/last.ckpt" if versioned else "checkpoints/last.ckpt"
    found = list(root.glob(pattern)) if root.is_dir() else []
    if not found:
        raise CheckpointError(printable(f"--ckpt_path last: no checkpoints/last.ckpt under {root}"))
    for path in found:  # the run folders only, never through a link planted among them
        if any(p.is_symlink() for p in (path, path.parent, path.parent.parent)):
            raise CheckpointError(
                printable(
                    f"--ckpt_path last: {path} is reached through a link; give --ckpt_path "
                    "the checkpoint file itself."
                )
            )
    newest = str(max(found, key=lambda p: p.stat().st_mtime))
    rank_zero_info(printable(f"Resuming from {newest}"))
    config.ckpt_path = newest
    return newest


def _run_root(trainer: Any) -> tuple[Path, bool]:
    """The folder that holds the runs of a parsed ``trainer`` config, and whether each run is
    a versioned folder in it: its first logger's ``save_dir/name``; Lightning's default
    logger's ``default_root_dir/lightning_logs``; ``default_root_dir`` itself without a logger
    (not versioned).

    Raises:
        CheckpointError: a logger whose folder its arguments do not tell (MLflow names it
            after an experiment id).
    """
    root = Path(str(trainer.get("default_root_dir") or "."))
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return root, False
    if logger is None or logger is True:
        return root / "lightning_logs", True
    class_path = str(_get(logger, "class_path") or "")
    init = _get(logger, "init_args")
    save_dir = _get(init, "save_dir")
    # WandB names its run folder after the project (``name`` is the run's label).
    if class_path.endswith("WandbLogger"):
        name = _get(init, "project") or os.environ.get("WANDB_PROJECT") or "lightning_logs"
    elif class_path.endswith(("CSVLogger", "TensorBoardLogger")):
        name = _get(init, "name")
    else:
        name = save_dir = None
    if not isinstance(save_dir, (str, Path)) or not isinstance(name, (str, type(None))):
        kind = class_path.rsplit(".", 1)[-1] or type(logger).__name__
        raise CheckpointError(
            printable(
                f"--ckpt_path last: cannot tell where {kind} keeps this config's runs; give "
                "--ckpt_path the checkpoint file itself."
            )
        )
    return Path(save_dir) / (name or ""), True


def _get(section: Any, key: str) -> Any:
    """``section[key]`` of a parsed config section (a namespace or a mapping), else ``None``."""
    getter = getattr(section, "get", None)
    return getter(key) if callable(getter) else None


@contextmanager
def checkpoint_layer(args: list[str]) -> Iterator[tuple[list[str], str | None]]:
    """Insert the checkpoint's model/data arguments as the first ``--config`` of an eval run;
    yields the arguments and the checkpoint used (``None`` when no layer was inserted)."""
    command = subcommand(args)
    ckpt = _option(args, "--ckpt_path")
    if command not in EVAL_COMMANDS or not ckpt or ckpt in CKPT_KEYWORDS:
        yield args, None
        return
    layer = config_from_checkpoint(ckpt)
    layer["model"].pop("image_size", None)  # linked from data.image_size
    run = run_of_checkpoint(Path(ckpt))
    # Results go beside the run they evaluate, unless a config or option chooses the logger
    # (jsonargparse would merge their logger arguments into this one, not replace it).
    if run is not None and not chooses_logger(args) and os.access(run, os.W_OK):
        version = _free_name(run, command)
        layer["trainer"] = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "", "version": version},
            }
        }
    with tempfile.TemporaryDirectory(prefix="classifier-ckpt-") as tmp:
        path = Path(tmp) / "checkpoint_config.yaml"
        path.write_text(yaml.safe_dump(layer))
        at = args.index(command) + 1
        yield [*args[:at], "--config", str(path), *args[at:]], ckpt


def _free_name(run: Path, command: str) -> str:
    """``test``, then ``test_2``, ``test_3`` ...: the first name not yet taken in ``run``,
    created here so that no other command takes it."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:  # a DDP process re-running the command
        taken = [p for p in run.glob(f"{command}*") if p.is_dir()]
        if taken:  # the folder rank 0 reserved
            return max(taken, key=lambda p: p.stat().st_mtime).name
    name, number = command, 1
    while True:
        try:
            (run / name).mkdir()  # reserved: two commands at once never share a folder
            return name
        except FileExistsError:
            number += 1
            name = f"{command}_{number}"


def config_from_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``data`` config sections of the checkpoint at ``path``."""
    return checkpoint_config(load_checkpoint(path), path)


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``data`` config sections a loaded checkpoint was trained with.

    The weights come from the checkpoint, so ``pretrained`` is turned off; the class order is
    pinned to the checkpoint's.

    Raises:
        CheckpointError: the checkpoint names no classes, or a class path outside the
            allow-list.
    """
    model = dict(checkpoint.get("hyper_parameters", {}))  # mappings: load_checkpoint checked
    data = dict(checkpoint.get("datamodule_hyper_parameters", {}))
    refuse_foreign_class_paths(model, f"checkpoint {path} (model hyper-parameters)")
    refuse_foreign_class_paths(data, f"checkpoint {path} (data hyper-parameters)")
    class_names = checkpoint.get("class_names") or model.get("class_names")
    if not class_names:  # load_checkpoint checked their type
        raise CheckpointError(f"{path} stores no class names; was it trained by classifier?")
    for section in (model, data):
        for key in ("class_names", "_instantiator", "_class_path", *LINKED):
            section.pop(key, None)
    _drop_retired(model, data, path)
    model["pretrained"] = False
    model.setdefault("image_size", data.get("image_size"))  # the size it was trained at
    data["class_names"] = list(class_names)
    return {"model": model, "data": data}


def _drop_retired(model: dict[str, Any], data: dict[str, Any], path: str | Path) -> None:
    """Leave out (with a warning) options an older checkpoint has that this version retired,
    so its model and data are still built (``model.top_k`` moved to ``PredictionWriter``)."""
    import inspect
    import warnings

    from classifier.datamodule import ImageFolderDataModule
    from classifier.model import ImageClassifier

    for name, section, cls in (
        ("model", model, ImageClassifier),
        ("data", data, ImageFolderDataModule),
    ):
        accepted = inspect.signature(cls.__init__).parameters
        for key in [k for k in section if k not in accepted]:
            del section[key]
            warnings.warn(f"{path}: {name}.{key} is no longer an option; ignored", stacklevel=3)
