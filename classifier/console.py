"""What a command prints: its version line, no messages that do not concern the user's run
(Lightning's advertising, warnings about its own internals), and no control characters from
file names."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from typing_extensions import override

from classifier.arguments import EVAL_COMMANDS
from classifier.errors import printable


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


def _escaping(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that shows the message with control characters escaped."""

    def escaped(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        show(printable(str(message)), *args, **kwargs)

    return escaped


@contextmanager
def console(command: str | None) -> Iterator[None]:
    """For this command only: silence messages that do not concern the user's run, and show
    control characters in warnings and log messages escaped (names come from files)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # rank_zero_info
    guard = _Console()
    logger.addFilter(guard)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _escaping(warnings.showwarning)
            if not os.environ.get("CLASSIFIER_DEBUG"):
                noise = _NOISE + (_EVAL_NOISE if command in EVAL_COMMANDS else ())
                for message in noise:
                    warnings.filterwarnings("ignore", message=f".*{message}")
            yield
    finally:
        logger.removeFilter(guard)
