"""The one base class of the errors a user can fix, and the one place they are printed.

Every such error says what to change; the ``classifier``, ``classifier-export`` and
``classifier-predict`` commands print it after ``error:`` and exit with status 1, without a
traceback (:func:`one_line_errors`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from classifier.text import printable


class UserError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(UserError):
    """An option has a value that cannot work (the message names the option)."""


@contextmanager
def one_line_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Print a :class:`UserError` (or one of ``extra``) as ``error: ...`` and exit with status
    1, without a traceback; the console scripts run inside this. Control characters in the
    message (ANSI escapes in a file name, say) are shown escaped, never sent to the terminal."""
    caught: tuple[type[BaseException], ...] = (UserError, *extra)
    try:
        yield
    except caught as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        sys.exit(1)
