"""What a config or checkpoint may name: class paths outside an allow-list are refused before
anything is imported.

A YAML ``class_path`` is an import: ``class_path: os.system`` or a path into an untrusted
package runs code the moment it is resolved. Configs and checkpoints passed around between
people must not be able to do that, so every ``class_path`` is checked against
:data:`ALLOWED_PREFIXES` (plus the comma-separated prefixes in ``$CLASSIFIER_ALLOWED_CLASS_PATHS``
for your own callbacks) before LightningCLI sees it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

#: Modules a ``class_path`` may name.
ALLOWED_PREFIXES = (
    "classifier.",
    "lightning.",
    "pytorch_lightning.",
    "torch.optim.",
    "timm.",
)
#: Command-line keys whose values name classes.
_CLASS_KEYS = ("class_path", "callbacks", "logger", "strategy", "plugins", "profiler")


class UnsafeConfigError(ValueError):
    """A config or checkpoint names a class outside the allow-list."""


def allowed_prefixes() -> tuple[str, ...]:
    """:data:`ALLOWED_PREFIXES` plus ``$CLASSIFIER_ALLOWED_CLASS_PATHS``."""
    extra = os.environ.get("CLASSIFIER_ALLOWED_CLASS_PATHS", "")
    more = tuple(p.strip().rstrip(".") + "." for p in extra.split(",") if p.strip())
    return ALLOWED_PREFIXES + more


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
    """Raise :class:`UnsafeConfigError` if ``value`` names a class outside the allow-list."""
    prefixes = allowed_prefixes()
    for path in find_class_paths(value):
        if not path.startswith(prefixes):
            raise UnsafeConfigError(
                f"{origin} names class_path {path!r}, outside the allowed modules "
                f"({', '.join(p.rstrip('.') for p in prefixes)}); refusing to import it. "
                "Add trusted packages to $CLASSIFIER_ALLOWED_CLASS_PATHS (comma-separated)."
            )


def _pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for i, arg in enumerate(args):
        if arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            pairs.append((key, value))
        elif arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            pairs.append((arg, args[i + 1]))
    return pairs


def check_cli_args(args: Sequence[str]) -> None:
    """Refuse foreign class paths in ``--config`` files and class-valued arguments."""
    for key, value in _pairs(args):
        if key in {"--config", "-c"}:
            path = Path(value)
            if path.is_file():
                refuse_foreign_class_paths(yaml.safe_load(path.read_text()), f"config {path}")
            continue
        if not any(k in key for k in _CLASS_KEYS):
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str) and "." in parsed:
            parsed = {"class_path": parsed}
        refuse_foreign_class_paths(parsed, f"argument {key}")
