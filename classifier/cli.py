"""The ``classifier`` command: LightningCLI over ``ImageClassifier`` and ``ImageFolderDataModule``.

``main(args=[...])`` runs it in-process (tests use this).

What a command prints: its version line, no messages that do not concern the user's run
(Lightning's advertising, warnings about its own internals), and no control characters from
file names.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from classifier.arguments import (
    CKPT_KEYWORDS,
    EVAL_COMMANDS,
    checkpoint_layer,
    resolve_last,
    subcommand,
)
from classifier.calibration import Calibration
from classifier.checkpoint import CheckpointError, checkpoint_file, guard_checkpoint_loads
from classifier.datamodule import ImageFolderDataModule
from classifier.errors import ConfigError, UserError, one_line_errors, printable
from classifier.figures import wait_for_figures
from classifier.file_io import run_dir, run_of_checkpoint
from classifier.html_report import write_report
from classifier.label_issues import LabelIssues
from classifier.metrics import PerClassReport
from classifier.model import ImageClassifier
from classifier.prediction_writer import PredictionWriter
from classifier.preflight import (
    check_config_files,
    check_inside,
    check_new_run_folder,
    check_resume,
    refuse_half_weights,
    refuse_spawn,
)
from classifier.resume import SIGTERM_EXIT_CODE, PreemptionCheckpoint
from classifier.resumed_run import SameRunFolder, continue_run, keep_earlier_files
from classifier.safety import (
    enforce_import_policy,
    no_working_folder_imports,
    refuse_unsafe_objects,
    unsafe_error,
)
from classifier.sam import check_sam_trainer
from classifier.tune import TuneError, find


def version_line() -> str:
    """``classifier X (lightning Y, torch Z, timm W)``, for ``classifier --version``."""
    import lightning
    import timm
    import torch

    from classifier import __version__

    versions = (
        f"lightning {lightning.__version__}, torch {torch.__version__}, timm {timm.__version__}"
    )
    return f"classifier {__version__} ({versions})"


#: Warnings about Lightning's internals, not about the user's run, silenced in every command
#: (``CLASSIFIER_DEBUG=1`` shows them).
_NOISE = (
    "LightningCLI's args parameter is intended",  # args is how the checkpoint layer goes in
    r"isinstance\(treespec, LeafSpec\)",  # a deprecation inside Lightning's torch calls
    "`torch.jit.script` is deprecated",  # fvcore's FLOP counter
    # A fit resumed in its own run folder (resumed_run keeps the earlier metrics.csv aside);
    # a new run's folder is checked to be new before anything is written.
    "Previous log files in this directory will be deleted",
    r"Checkpoint directory .* exists and is not empty",
)
#: Evaluating a checkpoint needs neither its training callbacks nor its checkpoint folder.
_EVAL_NOISE = (
    "callbacks used to create the checkpoint need to be provided",
    "The dirpath has changed from",
)


class _Console(logging.Filter):
    """Drop Lightning's advertising (``💡 Tip: ... litlogger / litmodels``); show control
    characters in the rest (a file or folder name with ANSI escapes) escaped."""

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        if "💡 Tip:" in str(record.msg):
            return False
        message = record.getMessage()
        if printable(message) != message:
            record.msg, record.args = printable(message), ()
        return True


#: The package's folder: a warning raised from here is ours, shown as one line.
_PACKAGE = Path(__file__).resolve().parent


def _escaping(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that shows the message with control characters escaped."""

    def escaped(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        show(printable(str(message)), *args, **kwargs)

    return escaped


def _one_line(format_warning: Callable[..., str]) -> Callable[..., str]:
    """``warnings.formatwarning`` that shows the package's own warnings as one ``warning:``
    line (no file, line number or source line: they say what to change) and other libraries'
    as Python does."""

    def formatted(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        if Path(filename).resolve().is_relative_to(_PACKAGE):
            return f"warning: {message}\n"
        return format_warning(message, category, filename, lineno, line)

    return formatted


@contextmanager
def console(command: str | None) -> Iterator[None]:
    """For this command only: silence messages that do not concern the user's run, and show
    control characters in warnings and log messages escaped (names come from files)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # rank_zero_info
    guard = _Console()
    logger.addFilter(guard)
    format_warning = warnings.formatwarning  # catch_warnings does not restore it
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _escaping(warnings.showwarning)
            warnings.formatwarning = _one_line(format_warning)
            if not os.environ.get("CLASSIFIER_DEBUG"):
                noise = _NOISE + (_EVAL_NOISE if command in EVAL_COMMANDS else ())
                for message in noise:
                    warnings.filterwarnings("ignore", message=f".*{message}")
            yield
    finally:
        warnings.formatwarning = format_warning
        logger.removeFilter(guard)


class RunConfig(SaveConfigCallback):
    """Save the resolved ``config.yaml`` into the run folder (:func:`~classifier.file_io.run_dir`).

    Lightning's own callback writes to ``trainer.log_dir``, which for WandB is the shared
    ``save_dir``: a second run there would stop on the first run's config.yaml.
    """

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Write config.yaml (rank 0; the parser refuses to overwrite another run's file)."""
        folder = run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(
            self.config,
            str(folder / self.config_filename),
            skip_none=False,
            overwrite=self.overwrite,
            multifile=self.multifile,
        )


class ClassifierArgumentParser(LightningArgumentParser):
    """Lightning's parser without option abbreviations, reporting refused imports in one line.

    ``--ckpt`` must not silently mean ``--ckpt_path``: an option is taken only as spelt out.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Raise :class:`UnsafeConfigError` for a refused import; otherwise print one
        ``error:`` line (status 2), not the usage text ``--help`` prints."""
        unsafe = unsafe_error(message)
        if unsafe is not None:
            raise unsafe from None
        if not self.exit_on_error:  # jsonargparse trying alternatives: it catches this
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        prog = prog.replace("__main__.py", "classifier")  # python -m classifier
        sys.stderr.write(printable(f"error: {' '.join(message.split())} (see {prog} --help)\n"))
        self.exit(2)


class ClassifierCLI(LightningCLI):
    """LightningCLI with the class list linked from the data to the model.

    Every checkpoint the trainer loads goes through :func:`~classifier.checkpoint.load_checkpoint`
    (weights only); there is no ``--weights_only`` option to turn that off.
    """

    def __init__(
        self,
        *args: Any,
        layer_ckpt: str | None = None,
        **kwargs: Any,
    ) -> None:
        #: The checkpoint whose model/data arguments were inserted as the first config layer.
        self.layer_ckpt = layer_ckpt
        #: The checkpoint ``--ckpt_path last`` found (set once the arguments are parsed).
        self.found_last: str | None = None
        #: The run folder a resumed ``fit`` continues in (``None``: a new run folder).
        self.resumed_run: Path | None = None
        enforce_import_policy()
        super().__init__(*args, **kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then refuse any function or object a value named that the import policy
        cannot see (a builtin or bound method reached through an allowed module); resolve a
        ``fit``'s ``ckpt_path: last`` from the parsed settings (config files and options)."""
        super().parse_arguments(parser, args)
        refuse_unsafe_objects(self.config)
        if self.config.get("subcommand") == "fit":
            fit = self.config["fit"]
            configured = bool(self.config.get("config") or fit.get("config"))
            self.found_last = resolve_last(fit, configured)

    @override
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands, without the ``weights_only`` argument."""
        return {name: {*skip, "weights_only"} for name, skip in LightningCLI.subcommands().items()}

    @override
    def instantiate_classes(self) -> None:
        """Lightning's, with a :class:`~classifier.errors.UserError` that a class's
        constructor raised (a callback refusing a value) reported as itself, in one line:
        jsonargparse wraps it in a many-line error about the types it tried."""
        try:
            super().instantiate_classes()
        except Exception as error:
            found = _user_error_in(error)
            if found is None:
                raise
            raise found from None

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's trainer, loading checkpoints only through the safe loader."""
        refuse_spawn(self.config[str(self.subcommand)].trainer.strategy)
        refuse_half_weights(self.config[str(self.subcommand)].trainer.precision)
        trainer = super().instantiate_trainer(**kwargs)
        guard_checkpoint_loads(trainer.strategy)
        return trainer

    def _check_ckpt_path(self) -> None:
        """Fail at once, in one line, on a checkpoint path that cannot be loaded."""
        ckpt = self.config.get(str(self.subcommand), {}).get("ckpt_path")
        if self.layer_ckpt is not None and str(ckpt) != self.layer_ckpt:
            raise CheckpointError(
                f"ckpt_path is given twice ({self.layer_ckpt} on the command line, {ckpt} from a "
                "config); give it once, so the weights and the model arguments match."
            )
        if str(ckpt) in CKPT_KEYWORDS - {"last"}:
            raise CheckpointError(  # Lightning's names for a checkpoint of this same process
                f"ckpt_path {ckpt} names no checkpoint in a new command; give the checkpoint "
                "file (runs/.../checkpoints/best.ckpt), or last to resume a fit."
            )
        if ckpt and str(ckpt) not in CKPT_KEYWORDS:
            checkpoint_file(ckpt)
        if str(ckpt) == "last" and self.found_last is None:
            raise CheckpointError(  # fit resolved it when parsing: an evaluation
                "ckpt_path last is resolved by fit only (it resumes a run); give "
                f"{self.subcommand} the checkpoint file."
            )
        self._check_run_folder()

    def _check_run_folder(self) -> None:
        """Before anything is written: the results folder holds no other run's files, and no
        checkpoint callback writes outside it (rank 0: other DDP ranks start once it wrote)."""
        loggers = self.trainer.loggers
        # A logger that names its run when it starts (WandB's random id) makes a new folder.
        named = not loggers or getattr(loggers[0], "version", None) is not None
        if not self.trainer.is_global_zero or not named:
            return
        folder = run_dir(self.trainer)
        if self.resumed_run is not None and Path(os.path.abspath(folder)) == self.resumed_run:
            keep_earlier_files(folder, self.trainer.callbacks)  # type: ignore[attr-defined]
            return
        check_new_run_folder(folder, Path(self.trainer.default_root_dir))
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            check_inside(getattr(callback, "dirpath", None), folder, type(callback).__name__)

    def _ensure(self, callback: type[Callback]) -> None:
        """Add a ``callback`` with default arguments unless the config has one."""
        callbacks: list[Any] = getattr(self.trainer, "callbacks")  # noqa: B009 (set at runtime)
        if not any(isinstance(c, callback) for c in callbacks):
            callbacks.append(callback())

    def _warn_flipping_tta(self) -> None:
        """Mirrored test-time views of images that training never mirrors may read as other
        classes (digits, text)."""
        config = self.config[str(self.subcommand)]
        if "flip" in config.model.tta and not config.data.hflip:
            warnings.warn(
                "tta flips images, but the data is never flipped in training (data.hflip 0): "
                "mirrored views may read as other classes; --model.tta crops keeps them upright",
                stacklevel=2,
            )

    def before_validate(self) -> None:
        """Check ``ckpt_path`` before any data is read; write the per-class report."""
        self._check_ckpt_path()
        self._ensure(PerClassReport)

    def before_test(self) -> None:
        """Check ``ckpt_path`` before any data is read; write the per-class report and the
        test's calibration (ECE and NLL before and after the checkpoint's temperature) and
        its label issues."""
        self._check_ckpt_path()
        self._warn_flipping_tta()
        self._ensure(PerClassReport)
        self._ensure(Calibration)
        self._ensure(LabelIssues)

    @override
    def before_instantiate_classes(self) -> None:
        """Give ``data.seed`` the run's ``seed_everything`` when it is not set (after Lightning
        has drawn a random seed for ``seed_everything: true``), so config.yaml records it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.data.seed is None:
            seed = config.seed_everything
            config.data.seed = 0 if isinstance(seed, bool) else int(seed)
        if self.subcommand == "fit":
            self.resumed_run = continue_run(config)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link ``data.class_names`` and ``data.image_size`` (the network's size) to the model,
        ``model.model_name`` to ``data.backbone`` (its preprocessing); add tune, test_after_fit."""
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("model.model_name", "data.backbone")
        parser.add_argument(
            "--tune.batch_size",
            type=bool,
            default=False,
            help="Before fit, find the largest batch size that fits (Lightning's Tuner, on one "
            "device) and train with it; config.yaml records the value.",
        )
        parser.add_argument(
            "--tune.lr",
            type=bool,
            default=False,
            help="Before fit, run the learning-rate finder, train with its suggestion and save "
            "lr_finder.png; config.yaml records the value.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the best checkpoint on the test/ split (if present).",
        )

    @override
    def _parse_ckpt_path(self) -> None:
        """Disabled: checkpoint arguments are applied as the first config layer in ``main``."""

    def before_predict(self) -> None:
        """Check ``ckpt_path``; make sure predictions are written to a CSV."""
        self._check_ckpt_path()
        self._warn_flipping_tta()
        self._ensure(PredictionWriter)

    def before_fit(self) -> None:
        """Check ``ckpt_path``, that the run folder is new and that a resumed checkpoint is
        this experiment's (before anything is written); make sure a pre-empted run leaves a
        checkpoint to resume from and that the per-class reports are written."""
        self._check_ckpt_path()
        ckpt = self.config[str(self.subcommand)].get("ckpt_path")
        if ckpt and str(ckpt) not in CKPT_KEYWORDS:
            data = self.datamodule
            names = list(getattr(data, "class_names", []))
            if names:
                folder = str(getattr(data, "data_dir", ""))
                check_resume(str(ckpt), names, folder, str(ckpt) == self.found_last)
        if self.trainer.accumulate_grad_batches < 1:
            raise ConfigError("trainer.accumulate_grad_batches must be 1 or more")
        if self.model.hparams.get("optimizer") == "sam":
            check_sam_trainer(self.trainer)  # before any data is read
        self._ensure(PreemptionCheckpoint)
        self._ensure(PerClassReport)
        if self.resumed_run is not None:
            self._ensure(SameRunFolder)
        self._tune()

    def _tune(self) -> None:
        """Run the finders asked for and record what they found in the run's config."""
        config = self.config[str(self.subcommand)]
        tune = config.get("tune")
        if tune is None or not (tune.batch_size or tune.lr):
            return
        if config.get("ckpt_path"):
            raise TuneError(
                "--tune.* starts a new run: a resumed run keeps its optimizer's learning rate "
                "and its batch size; drop --ckpt_path or the finders."
            )
        folder = run_dir(self.trainer)
        folder.mkdir(parents=True, exist_ok=True)
        found = find(self.trainer, self.model, self.datamodule, tune.batch_size, tune.lr, folder)
        if found.batch_size is not None:
            config.data.batch_size = found.batch_size
            rank_zero_info(f"Batch-size finder: training with batch_size {found.batch_size}")
        if found.lr is not None:
            config.model.lr = found.lr
            rank_zero_info(
                f"LR finder: training with lr {found.lr:.4g} ({folder / 'lr_finder.png'})"
            )
        tune.batch_size = tune.lr = False  # config.yaml reruns with the values, not the search

    def after_validate(self) -> None:
        """Say where the results are."""
        rank_zero_info(f"\nResults: {run_dir(self.trainer)}")

    def after_test(self) -> None:
        """Say where the results are; refresh the evaluated run's report.html with them."""
        results = run_dir(self.trainer)
        rank_zero_info(f"\nResults: {results}")
        ckpt = self.config[str(self.subcommand)].get("ckpt_path")
        run = run_of_checkpoint(Path(ckpt)) if ckpt and Path(ckpt).is_file() else None
        if run is not None and self.trainer.is_global_zero:
            _report(run, results)

    def after_fit(self) -> None:
        """Print where the run's files are; optionally test the best checkpoint."""
        trainer = self.trainer
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        config, data = self.config.get(str(self.subcommand), {}), self.datamodule
        has_test = isinstance(data, ImageFolderDataModule) and data.source.present("test")
        if config.get("test_after_fit") and has_test and not trainer.interrupted:
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        rank_zero_info(f"\nRun folder: {run_dir(trainer)}")
        if best:
            rank_zero_info(f"Best checkpoint: {best}")
        if trainer.is_global_zero and not trainer.interrupted:
            _report(run_dir(trainer))


def _user_error_in(error: BaseException) -> UserError | None:
    """The :class:`~classifier.errors.UserError` among ``error``'s causes, if any."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        if isinstance(found, UserError):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


def _report(run: Path, results: Path | None = None) -> None:
    """Write ``run/report.html`` once the figures it embeds are drawn; a failure is a one-line
    warning (a read-only run folder, a run-folder file someone damaged), never a lost result:
    the command's own results are written before."""
    wait_for_figures()
    try:
        rank_zero_info(f"Report: {write_report(run, results)}")
    except Exception as error:  # whatever a damaged run-folder file makes the report raise
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        warnings.warn(f"report.html not written: {printable(message)}", stacklevel=2)


@contextmanager
def _figures_written() -> Iterator[None]:
    """Wait for the figures still rendering in the background before the command returns
    (also after Ctrl-C, SIGTERM or an error), so none is lost or half-written."""
    try:
        yield
    finally:
        wait_for_figures()


def main(args: list[str] | None = None) -> Any:
    """Run the ``classifier`` command line (``args`` default to ``sys.argv[1:]``)."""
    # sys.argv stays as typed: Lightning's DDP launcher re-runs it in every child process.
    argv = list(sys.argv[1:] if args is None else args)
    check_config_files(argv)
    if subcommand(argv) is None and "--version" in argv:
        print(version_line())
        return None
    with (
        console(subcommand(argv)),
        no_working_folder_imports(),
        checkpoint_layer(argv) as (argv, layer_ckpt),
        _figures_written(),
    ):
        return ClassifierCLI(
            ImageClassifier,
            ImageFolderDataModule,
            args=argv,
            seed_everything_default=42,
            # Lightning's summary shows FLOPs 0 without an example input: classifier.ModelInfo
            # reports parameters, GMACs and speed instead.
            trainer_defaults={
                "use_distributed_sampler": False,
                "default_root_dir": "runs",
                "enable_model_summary": False,
            },
            auto_configure_optimizers=False,
            save_config_callback=RunConfig,
            save_config_kwargs={"save_to_log_dir": False},
            parser_class=ClassifierArgumentParser,
            layer_ckpt=layer_ckpt,
        )


def entry() -> None:
    """The ``classifier`` command: user errors as one ``error:`` line (status 1), SIGTERM as
    status 143 (``SystemExit``). Lightning's ``MisconfigurationException`` (settings that
    contradict each other) is a user error too."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        with one_line_errors(MisconfigurationException):
            main()
    except SIGTERMException:
        sys.exit(SIGTERM_EXIT_CODE)


if __name__ == "__main__":
    entry()
