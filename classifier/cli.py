"""The ``classifier`` command: LightningCLI over ``ImageClassifier`` and ``ImageFolderDataModule``.

``main(args=[...])`` runs it in-process (tests use this).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from classifier.checkpoint import config_from_checkpoint
from classifier.data import ImageFolderDataModule
from classifier.model import ImageClassifier
from classifier.predict import PredictionWriter

_EVAL_COMMANDS = {"validate", "test", "predict"}


class ClassifierCLI(LightningCLI):
    """LightningCLI with the class list linked from the data to the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link ``data.class_names`` to ``model.class_names``; add ``test_after_fit``."""
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the best checkpoint on the test/ split (if present).",
        )

    def _parse_ckpt_path(self) -> None:
        """Disabled: checkpoint arguments are applied as the first config layer in ``main``."""

    def before_predict(self) -> None:
        """Make sure predictions are written to a CSV."""
        callbacks: list[Any] = getattr(self.trainer, "callbacks")  # noqa: B009 (set at runtime)
        if not any(isinstance(c, PredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())

    def after_fit(self) -> None:
        """Print where the run's files are; optionally test the best checkpoint."""
        trainer = self.trainer
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        config = self.config.get(str(self.subcommand), {})
        test_dir = Path(self.datamodule.hparams.data_dir) / "test"
        if config.get("test_after_fit") and test_dir.is_dir() and not trainer.interrupted:
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        rank_zero_info(f"\nRun folder: {trainer.log_dir}")
        if best:
            rank_zero_info(f"Best checkpoint: {best}")


@contextmanager
def _checkpoint_layer(args: list[str]) -> Iterator[list[str]]:
    """Insert the checkpoint's model/data arguments as the first ``--config`` of an eval run."""
    command = next((a for a in args if not a.startswith("-")), None)
    ckpt = None
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            ckpt = args[i + 1]
        elif arg.startswith("--ckpt_path="):
            ckpt = arg.split("=", 1)[1]
    if command not in _EVAL_COMMANDS or not ckpt or ckpt in {"best", "last", "hpc"}:
        yield args
        return
    layer = config_from_checkpoint(ckpt)
    with tempfile.TemporaryDirectory(prefix="classifier-ckpt-") as tmp:
        path = Path(tmp) / "checkpoint_config.yaml"
        path.write_text(yaml.safe_dump(layer))
        at = args.index(command) + 1
        yield [*args[:at], "--config", str(path), *args[at:]]


def main(args: list[str] | None = None) -> Any:
    """Run the ``classifier`` command line (``args`` default to ``sys.argv[1:]``)."""
    if args is None:
        # Lightning warns when both sys.argv and args are given; the console script passes
        # its arguments through `args` so a checkpoint layer can be inserted.
        args, sys.argv[1:] = sys.argv[1:], []
    argv = list(args)
    with _checkpoint_layer(argv) as argv:
        return ClassifierCLI(
            ImageClassifier,
            ImageFolderDataModule,
            args=argv,
            seed_everything_default=42,
            trainer_defaults={"use_distributed_sampler": False, "default_root_dir": "runs"},
            auto_configure_optimizers=False,
        )


def entry() -> None:
    """Console-script entry point (``classifier``)."""
    main()


if __name__ == "__main__":
    entry()
