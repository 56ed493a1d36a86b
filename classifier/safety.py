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
from collections.abc import Iterator
from contextlib import contextmanager
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
    bound_yaml()


def refuse_unsafe_objects(config: Any, where: str = "") -> None:
    """Refuse any object in a parsed ``config`` that is neither data nor a class or plain
    function defined in an allowed module.

    jsonargparse resolves a dotted name to whatever it reaches and checks the path it was
    asked for and the object's defining module; an object that knows no module (a builtin
    function or method, ``some.allowed.module.a_dict.setdefault``), a bound method or a module
    reached through an allowed module's globals slips past that check. Here every
    non-data value of the parsed config must be a class or a Python function whose defining
    module and name lie inside the allow-list.

    Raises:
        UnsafeConfigError: such a value, named by where it is in the config.
    """
    from jsonargparse import Namespace

    if isinstance(config, Namespace):
        config = vars(config)
    if isinstance(config, dict):
        for key, value in config.items():
            refuse_unsafe_objects(value, f"{where}.{key}" if where else str(key))
        return
    if isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            refuse_unsafe_objects(value, f"{where}[{i}]")
        return
    if config is None or isinstance(config, (str, bytes, int, float, bool, os.PathLike)):
        return
    if _defined_in_allowed_module(config):
        return
    raise UnsafeConfigError(
        f"{where or 'the config'} names {config!r}, which is not a class or function defined "
        f"in the allowed packages ({', '.join((*ALLOWED_PREFIXES, 'classifier'))} classes); "
        f"refusing to use it. Add trusted packages of your own to ${ENV_ALLOWED}."
    )


def _defined_in_allowed_module(value: Any) -> bool:
    """A class or plain Python function (not a builtin, bound method or module) whose
    defining module and qualified name are allowed."""
    import inspect

    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return False
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if not isinstance(module, str) or not name or "<" in name:
        return False
    return is_allowed(f"{module}.{name}")


#: The largest config text (a file, an environment variable or a command-line value).
MAX_CONFIG_CHARS = 1_000_000
#: The most YAML nodes a config may expand to, aliases counted each time they are used: a
#: few hundred bytes of nested aliases ("billion laughs") would otherwise expand to billions.
MAX_CONFIG_NODES = 200_000


def bound_yaml() -> None:
    """Make jsonargparse's YAML loader refuse oversized configs and alias bombs (within a
    second, with one error line) before it loads them."""
    import yaml
    from jsonargparse import get_loader, set_loader

    load = get_loader("yaml")
    if getattr(load, "bounded", False):
        return

    def bounded(text: str) -> Any:
        if len(text) > MAX_CONFIG_CHARS:
            raise UnsafeConfigError(
                f"a config of {len(text):,} characters is over the limit of "
                f"{MAX_CONFIG_CHARS:,}; refusing to parse it."
            )
        if "*" in text:  # an alias may expand: count what it expands to
            _check_expansion(
                yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            )
        return load(text)

    bounded.bounded = True  # type: ignore[attr-defined]
    set_loader("yaml", bounded, (yaml.YAMLError,))


def _check_expansion(root: Any) -> None:
    """Raise :class:`UnsafeConfigError` if the YAML node graph ``root`` expands (aliases
    followed) to more than :data:`MAX_CONFIG_NODES` nodes, or refers to itself."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)] if root is not None else []
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_CONFIG_NODES:
                break
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise UnsafeConfigError("the config refers to itself through a YAML alias.")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    total = sizes.get(id(root), 0) if root is not None else 0
    if total > MAX_CONFIG_NODES or any(v > MAX_CONFIG_NODES for v in sizes.values()):
        raise UnsafeConfigError(
            f"the config's YAML aliases expand to more than {MAX_CONFIG_NODES:,} values "
            "(an alias bomb?); refusing to parse it."
        )


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


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


@contextmanager
def no_working_folder_imports() -> Iterator[None]:
    """Every Python process this command starts (spawned DDP workers, spawn-method loader
    workers, anything started with ``python -c``) runs without the working folder on
    ``sys.path`` (``PYTHONSAFEPATH``, Python 3.11+), so a ``multiprocessing.py`` or
    ``torch/`` planted there is never imported. Restored when the command ends."""
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before
