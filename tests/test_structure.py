"""The shape of the package: no import cycle, callbacks on the public contract, modules and
functions of a size a reader can hold in mind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "classifier"


def _runtime_imports(path: Path) -> set[str]:
    """The ``classifier.*`` modules ``path`` imports when it runs (function-level imports
    included; ``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for sub in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("classifier"):
            if node.module == "classifier":  # from classifier import x: x may be a module
                found |= {f"classifier.{a.name}" for a in node.names}
            else:
                found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("classifier.")}
    modules = {f"classifier.{p.stem}" for p in PACKAGE.glob("*.py")}
    return found & modules


def _graph() -> dict[str, set[str]]:
    return {
        f"classifier.{p.stem}": _runtime_imports(p) - {f"classifier.{p.stem}"}
        for p in PACKAGE.glob("*.py")
        if p.stem != "__init__"
    }


def test_no_module_imports_itself_back_through_others() -> None:
    graph = _graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    cycles.append(" -> ".join([*path, dep]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert not cycles, cycles


def _callback_modules() -> list[Path]:
    """The modules of classifier's public callbacks."""
    import importlib

    from lightning.pytorch.callbacks import Callback

    import classifier

    found = set()
    for name in classifier.__all__:
        obj = getattr(classifier, name)
        if isinstance(obj, type) and issubclass(obj, Callback):
            found.add(Path(str(importlib.import_module(obj.__module__).__file__)))
    return sorted(found)


def test_callbacks_use_the_contract_not_the_concrete_classes() -> None:
    """Callbacks read the model and the data module through ``classifier.callback_contract``;
    the model and the data module do not import each other."""
    concrete = {"classifier.model", "classifier.datamodule"}
    callbacks = _callback_modules()
    assert len(callbacks) >= 12, [p.name for p in callbacks]
    offenders = {p.name: _runtime_imports(p) & concrete for p in callbacks}
    assert not {k: v for k, v in offenders.items() if v}
    graph = _graph()
    assert "classifier.datamodule" not in graph["classifier.model"]
    assert "classifier.model" not in graph["classifier.datamodule"]


def test_the_shipped_classes_keep_the_contract(image_folder: Path) -> None:
    from classifier.callback_contract import ClassifierModule, ImageData
    from classifier.datamodule import ImageFolderDataModule
    from classifier.model import ImageClassifier

    model = ImageClassifier("test_resnet", ["cat", "dog", "fox"], pretrained=False)
    data = ImageFolderDataModule(str(image_folder), image_size=32)
    assert isinstance(model, ClassifierModule)
    assert isinstance(data, ImageData)


def test_a_module_without_the_contract_gets_a_message_naming_it() -> None:
    import lightning.pytorch as pl

    from classifier.callback_contract import classifier_module

    with pytest.raises(TypeError, match=r"class_names.*classifier\.ImageClassifier has them"):
        classifier_module(pl.LightningModule())


def test_the_module_map_names_every_module() -> None:
    """docs/maintaining.md's map names each module of the package, and no module that is gone."""
    import re

    text = (PACKAGE.parent / "docs" / "maintaining.md").read_text()
    table = text[text.index("| step |") : text.index("`callback_contract.py` is what")]
    named = set(re.findall(r"`(\w+)\.py`", table))
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert named == modules, (sorted(modules - named), sorted(named - modules))
