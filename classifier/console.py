"""What a command prints: its version line, and no messages that do not concern the user's run
(Lightning's advertising, warnings about its own internals)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from typing_extensions import override

from classifier.arguments import EVAL_COMMANDS


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
)
#: Evaluating a checkpoint needs neither its training callbacks nor its checkpoint folder.
_EVAL_NOISE = (
    "callbacks used to create the checkpoint need to be provided",
    "The dirpath has changed from",
)


class _DropTips(logging.Filter):
    """Drop Lightning's advertising (``💡 Tip: ... litlogger / litmodels``)."""

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in str(record.msg)


@contextmanager
def quiet(command: str | None) -> Iterator[None]:
    """Silence, for this command only, messages that do not concern the user's run."""
    if os.environ.get("CLASSIFIER_DEBUG"):
        yield
        return
    noise = _NOISE + (_EVAL_NOISE if command in EVAL_COMMANDS else ())
    tips = _DropTips()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            for message in noise:
                warnings.filterwarnings("ignore", message=f".*{message}")
            yield
    finally:
        logger.removeFilter(tips)
