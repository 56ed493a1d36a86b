"""What a config, command line or checkpoint may name: import paths outside an allow-list are
refused before anything is imported.

A dotted name in a config is an import: ``class_path: os.system``, a bare ``callbacks:
[pkg.Cls]``, or a function path given to a ``Callable`` argument runs code the moment it is
resolved. Configs and checkpoints passed around between people must not be able to do that.

The check sits where names become objects: jsonargparse's own import-path policy, which every
route goes through (``class_path``, bare class names, list values, inline and nested configs,
environment variables, ``Callable`` and ``type`` arguments). It checks the requested name
*before* importing it and the defining module of the object it resolved to *after*, so
``lightning.pytorch.cli.os.system`` (an allowed prefix that ends in :func:`os.system`) is refused
too. Allowed are :data:`ALLOWED_PREFIXES` (the trainer's pluggable parts, not all of
Lightning), classifier's public classes, and the comma-separated packages in
``$CLASSIFIER_ALLOWED_CLASS_PATHS`` (for your own callbacks). Values of ``Any``-typed
arguments are never instantiated.
"""

from __future__ import annotations

import os
import re
from typing import Any

from classifier.errors import UserError

#: What a config may name: the trainer's pluggable parts and classifier's public classes.
#: Not whole packages: ``lightning`` and ``pytorch_lightning`` also hold functions that load
#: pickles or run files, and a value may name a function wherever a ``Callable`` is accepted.
_PLUGGABLE = ("callbacks", "loggers", "profilers", "strategies", "plugins", "accelerators")
ALLOWED_PREFIXES = (
    *(f"{package}.pytorch.{part}" for package in ("lightning",) for part in _PLUGGABLE),
    *(f"pytorch_lightning.{part}" for part in _PLUGGABLE),
    "lightning.fabric.plugins",
    "torch.optim",
)
#: The environment variable that adds trusted packages, comma-separated.
ENV_ALLOWED = "CLASSIFIER_ALLOWED_CLASS_PATHS"
#: jsonargparse's refusal, or ours already raised by a nested parser (for init_args).
_DENIED = re.compile(r"(?:Importing|command line names) '([^']+)'(?: is not allowed|, outside)")
#: Extra prefixes granted by an earlier :func:`enforce_import_policy` in this process.
_granted: set[str] = set()


class UnsafeConfigError(UserError, ValueError):
    """A config, argument or checkpoint names an import path outside the allow-list."""


def classifier_classes() -> tuple[str, ...]:
    """classifier's public classes, as exported (``classifier.EMA``) and where each is defined
    (``classifier.ema.EMA``): exact paths, so no helper function of the package is reachable."""
    import classifier

    paths: list[str] = []
    for name in classifier.__all__:
        obj = getattr(classifier, name)
        paths += [f"classifier.{name}", f"{obj.__module__}.{obj.__qualname__}"]
    return tuple(paths)


def user_prefixes() -> tuple[str, ...]:
    """The packages in ``$CLASSIFIER_ALLOWED_CLASS_PATHS`` (comma-separated)."""
    extra = os.environ.get(ENV_ALLOWED, "")
    return tuple(p.strip().strip(".") for p in extra.split(",") if p.strip().strip("."))


def allowed_prefixes() -> tuple[str, ...]:
    """:data:`ALLOWED_PREFIXES`, classifier's classes and ``$CLASSIFIER_ALLOWED_CLASS_PATHS``."""
    allowed = (*ALLOWED_PREFIXES, *classifier_classes())
    return allowed + tuple(p for p in user_prefixes() if p not in allowed)


def is_allowed(path: str) -> bool:
    """Whether the dotted ``path`` lies inside an allowed package."""
    return any(path == p or path.startswith(p + ".") for p in allowed_prefixes())


def enforce_import_policy() -> None:
    """Make jsonargparse refuse every import path outside :func:`allowed_prefixes`.

    jsonargparse keeps the policy per process and merges new entries into it, so prefixes that
    an earlier call allowed but ``$CLASSIFIER_ALLOWED_CLASS_PATHS`` no longer names are denied
    again.
    """
    from jsonargparse import set_parsing_settings

    extra = set(user_prefixes())
    stale = sorted(_granted - extra)
    set_parsing_settings(
        import_path_denylist=["*", *stale],
        import_path_allowlist=list(allowed_prefixes()),
        # A value for an ``Any``-typed argument (``console_kwargs``, ``tags``...) stays data:
        # otherwise a ``class_path`` there is called with the config's arguments, and any
        # allowed *function* would run with them.
        instantiate_subclass_spec_in_any=False,
    )
    _granted.clear()
    _granted.update(extra)


def unsafe_error(message: str) -> UnsafeConfigError | None:
    """The one-line :class:`UnsafeConfigError` for a parser error caused by a refused import."""
    found = _DENIED.search(message)
    if found is None:
        return None
    return UnsafeConfigError(
        f"the config or command line names {found.group(1)!r}, outside the allowed packages "
        f"({', '.join((*ALLOWED_PREFIXES, 'classifier'))} classes); refusing to import it. "
        f"Add trusted packages of your own to ${ENV_ALLOWED} (comma-separated)."
    )


def find_class_paths(value: Any) -> list[str]:
    """Every ``class_path`` value nested anywhere in ``value``."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in {"class_path", "_class_path"} and isinstance(item, str):
                found.append(item)
            else:
                found += find_class_paths(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found += find_class_paths(item)
    return found


def refuse_foreign_class_paths(value: Any, origin: str) -> None:
    """Raise :class:`UnsafeConfigError` if ``value`` names a ``class_path`` outside the
    allow-list (used on checkpoint hyper-parameters read outside the command line)."""
    for path in find_class_paths(value):
        if not is_allowed(path):
            raise UnsafeConfigError(
                f"{origin} names class_path {path!r}, outside the allowed packages "
                f"({', '.join((*ALLOWED_PREFIXES, 'classifier'))} classes); refusing to import it. "
                f"Add trusted packages to ${ENV_ALLOWED} (comma-separated)."
            )
