"""``python -m classifier`` and the ``classifier`` command.

:func:`entry` starts the figure renderer before torch and Lightning are imported, so it
loads matplotlib on a core the start-up leaves idle (see :mod:`classifier.renderer`), and
ends the process as soon as the command's work is done (see ``console.exit_now``).
"""

import sys


def entry() -> None:
    """Console-script entry point: start the figure renderer, run the command, exit."""
    from classifier import renderer

    renderer.start(sys.argv[1:])
    from classifier.cli import entry as run
    from classifier.console import exit_now

    code: int | str | None = 0
    try:
        run()
    except SystemExit as stop:
        code = stop.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as Python does
        print(code, file=sys.stderr)
        code = 1
    renderer.stop()  # it ends once its input is closed
    exit_now(code or 0)


if __name__ == "__main__":
    entry()
