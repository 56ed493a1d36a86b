"""The one base class of the errors a user can fix, and the one place they are printed.

Every such error says what to change; the ``classifier``, ``classifier-export`` and
``classifier-predict`` commands print it after ``error:`` and exit with status 1, without a
traceback (:func:`one_line_errors`).

Text that came from files, folders or configs, made safe for where it is shown: a terminal
(no control characters) or a spreadsheet cell (no formulas). Imports nothing heavy.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: C0 and C1 control characters and DEL, except newline and tab.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str) -> str:
    """``text`` with control characters (ANSI escape sequences, carriage returns, bells)
    written as ``\\x1b``-style escapes, so a file name cannot move the cursor, recolour or
    overwrite what a terminal shows. Newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def csv_cell(value: object) -> object:
    """``value`` as a CSV cell that a spreadsheet shows as text: a string beginning with
    ``= + - @``, a tab or a carriage return gets a leading ``'`` (OWASP's CSV-injection
    advice); numbers and other values pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


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
