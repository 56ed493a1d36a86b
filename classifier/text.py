"""Text that came from files, folders or configs, made safe for where it is shown: a terminal
(no control characters) or a spreadsheet cell (no formulas). Imports nothing heavy."""

from __future__ import annotations

import re

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
