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
too. Allowed are :data:`ALLOWED_PREFIXES` plus the comma-separated prefixes in
``$CLASSIFIER_ALLOWED_CLASS_PATHS`` (for your own callbacks).
"""

from __future__ import annotations

import os
import re
from typing import Any

#: Packages a config may name (every module below them too).
ALLOWED_PREFIXES = ("classifier", "lightning", "pytorch_lightning", "torch.optim", "timm")
#: The environment variable that adds trusted packages, comma-separated.
ENV_ALLOWED = "CLASSIFIER_ALLOWED_CLASS_PATHS"
#: jsonargparse's refusal, or ours already raised by a nested parser (for init_args).
_DENIED = re.compile(r"(?:Importing|command line names) '([^']+)'(?: is not allowed|, outside)")
#: Extra prefixes granted by an earlier :func:`enforce_import_policy` in this process.
_granted: set[str] = set()


class UnsafeConfigError(ValueError):
    """A config, argument or checkpoint names an import path outside the allow-list."""


def allowed_prefixes() -> tuple[str, ...]:
    """:data:`ALLOWED_PREFIXES` plus the packages in ``$CLASSIFIER_ALLOWED_CLASS_PATHS``."""
    extra = os.environ.get(ENV_ALLOWED, "")
    more = tuple(p.strip().strip(".") for p in extra.split(",") if p.strip().strip("."))
    return ALLOWED_PREFIXES + tuple(p for p in more if p not in ALLOWED_PREFIXES)


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

    allowed = allowed_prefixes()
    extra = set(allowed) - set(ALLOWED_PREFIXES)
    stale = sorted(_granted - extra)
    set_parsing_settings(import_path_denylist=["*", *stale], import_path_allowlist=list(allowed))
    _granted.clear()
    _granted.update(extra)


def unsafe_error(message: str) -> UnsafeConfigError | None:
    """The one-line :class:`UnsafeConfigError` for a parser error caused by a refused import."""
    found = _DENIED.search(message)
    if found is None:
        return None
    return UnsafeConfigError(
        f"the config or command line names {found.group(1)!r}, outside the allowed packages "
        f"({', '.join(allowed_prefixes())}); refusing to import it. "
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
                f"({', '.join(allowed_prefixes())}); refusing to import it. "
                f"Add trusted packages to ${ENV_ALLOWED} (comma-separated)."
            )
