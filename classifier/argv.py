"""Reading the command line before it is parsed (no torch, no Lightning: the ``classifier``
command reads it before the heavy imports)."""

from __future__ import annotations

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
