"""A separate process that draws the matplotlib figures, so they cost training no CPU time on
its own core and no time under its interpreter lock.

The ``classifier`` command starts it first thing (:func:`start`, before torch and Lightning
are imported), so it imports matplotlib and seaborn on a core the start-up leaves idle. The
figure thread (:mod:`classifier.plots`) sends it requests (a drawing of
:data:`classifier.figures.DRAWINGS`, a path and plain data) and waits for each file to be
written; the training thread never waits for it. Without the process (in-process use such as
``main(args=[...])``, or after it failed) figures are drawn in this process instead.

The renderer ignores Ctrl-C and SIGTERM (the command decides when to stop, and draws what
waits first) and ends when its input closes: when the command's process ends, however it ends.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from classifier.argv import runs, subcommand

#: Commands whose figures are worth a renderer process.
DRAWING_COMMANDS = ("fit", "validate", "test")
#: Set by launchers (Lightning's DDP, torchrun, SLURM, MPI, LSF) to the process's rank: the
#: renderer is started where all of them are 0 or unset (ranks other than 0 draw nothing).
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "SLURM_PROCID",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "JSM_NAMESPACE_RANK",
)
#: The longest a figure may take in the renderer (seconds) before it is drawn here instead.
TIMEOUT_S = 120.0
#: The folder holding this ``classifier`` package: the renderer imports the same one.
_ROOT = str(Path(__file__).resolve().parent.parent)
#: Runs the renderer with this package first on ``sys.path`` and without the current folder
#: (a ``classifier/`` folder there must not be imported).
_LAUNCH = (
    "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())];"
    f"sys.path.insert(0, {_ROOT!r}); from classifier.renderer import main; main()"
)
#: Bytes written per system call: a pipe never blocks a write of this size once it is
#: writable, so every write keeps to the deadline.
_CHUNK = select.PIPE_BUF


class RenderError(RuntimeError):
    """A figure the renderer could not draw (the drawing's own error, as text)."""


class Renderer:
    """The parent's handle on a renderer process: one request at a time."""

    def __init__(self) -> None:
        if not sys.executable:
            raise OSError("no Python executable to start the renderer with")
        self.process = subprocess.Popen(  # noqa: S603 (this Python, a fixed program)
            [sys.executable, "-c", _LAUNCH], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.lock = threading.Lock()

    def draw(self, name: str, path: Path, args: tuple[Any, ...]) -> Path:
        """Have the renderer write figure ``name`` to ``path``.

        Raises:
            RenderError: the drawing failed in the renderer.
            OSError, EOFError: the renderer is gone, or did not take or answer the request
                within :data:`TIMEOUT_S` (it is then stopped).
            pickle.PicklingError, TypeError, AttributeError: ``args`` cannot be pickled
                (nothing was sent).
        """
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        # Pickled first: a payload that cannot be pickled never leaves half a request.
        request = pickle.dumps((name, str(Path(path).absolute()), args), pickle.HIGHEST_PROTOCOL)
        with self.lock:
            deadline = time.monotonic() + TIMEOUT_S
            for start in range(0, len(request), _CHUNK):
                self._wait(stdin, deadline, write=True)
                os.write(stdin.fileno(), request[start : start + _CHUNK])
            self._wait(stdout, deadline, write=False)
            ok, message = pickle.load(stdout)  # noqa: S301 (our own child's answer)
        if not ok:
            raise RenderError(message)
        return path

    def _wait(self, pipe: IO[bytes], deadline: float, write: bool) -> None:
        """Wait until ``pipe`` can be written (or read); stop the renderer at the deadline."""
        left = max(0.0, deadline - time.monotonic())
        ready = (
            select.select([], [pipe], [], left)[1]
            if write
            else select.select([pipe], [], [], left)[0]
        )
        if not ready:
            self.stop_now()
            raise TimeoutError(f"the renderer did not answer within {TIMEOUT_S:.0f} s")

    def stop_now(self) -> None:
        """Kill the renderer, reap it and close its pipes."""
        self.process.kill()
        with suppress(OSError, subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout):
            with suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()

    def close(self) -> None:
        """Close its input: it ends after the request it is drawing."""
        if self.process.stdin is not None:
            with suppress(OSError):  # already closed, or the renderer is gone
                self.process.stdin.close()


_RENDERER: Renderer | None = None


def start(argv: list[str]) -> None:
    """Start the renderer for a command that draws, on the first process of a run only (DDP
    ranks other than 0 draw nothing); a failure leaves drawing in this process."""
    global _RENDERER
    if subcommand(argv) not in DRAWING_COMMANDS or not runs(argv):
        return
    if any(os.environ.get(v) not in (None, "", "0") for v in RANK_VARIABLES):
        return
    if os.environ.get("CLASSIFIER_RENDERER", "1") == "0" or _RENDERER is not None:
        return
    try:
        _RENDERER = Renderer()
    except (OSError, ValueError) as error:
        warnings.warn(f"figures are drawn in this process ({error})", stacklevel=2)


def stop() -> None:
    """Let the renderer end (it exits once its input is closed)."""
    global _RENDERER
    if _RENDERER is not None:
        _RENDERER.close()
        _RENDERER = None


def draw(name: str, path: Path, *args: Any) -> Path:
    """Write figure ``name`` of :data:`classifier.figures.DRAWINGS` to ``path``: in the
    renderer when it runs, else here (also from now on, if the renderer has gone)."""
    global _RENDERER
    renderer = _RENDERER
    if renderer is not None:
        try:
            return renderer.draw(name, path, args)
        except (pickle.PicklingError, TypeError, AttributeError):
            pass  # this figure's data cannot travel: drawn here, the renderer stays
        except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
            _RENDERER = None
            warnings.warn(f"figure renderer stopped ({error!r}); drawing here", stacklevel=2)
    from classifier import figures

    return figures.draw(name, path, *args)


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer drawing requests until the input closes."""
    from classifier import figures

    while True:
        try:
            name, path, args = pickle.load(requests)  # noqa: S301 (our parent's request)
        except EOFError:
            return
        try:
            figures.draw(name, Path(path), *args)
            answer: tuple[bool, str] = (True, "")
        except Exception as error:  # reported to the parent, which warns
            answer = (False, f"{type(error).__name__}: {error}")
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def main() -> None:
    """The renderer process: import the plotting libraries at once, then serve requests."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the answers
    start_time = time.monotonic()
    import matplotlib.figure  # noqa: F401 (imported now, while the command starts up)
    import seaborn  # noqa: F401

    if os.environ.get("CLASSIFIER_DEBUG"):
        print(f"renderer ready in {time.monotonic() - start_time:.2f} s", file=sys.stderr)
    _serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
