"""The data module: one class map from train/, labels by name, clear errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from classifier.datamodule import ImageFolderDataModule
from classifier.splits import DataError


def _setup(root: Path, stage: str = "fit", **kwargs: object) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), image_size=32, num_workers=0, **kwargs)  # type: ignore[arg-type]
    dm.setup(stage)
    return dm


def test_classes_come_from_train_sorted(folder_factory) -> None:  # type: ignore[no-untyped-def]
    dm = _setup(folder_factory(classes=("zebra", "ant", "mole")))
    assert dm.class_names == ["ant", "mole", "zebra"]
    assert dm.num_classes == 3


def test_val_missing_a_class_keeps_other_labels(folder_factory) -> None:  # type: ignore[no-untyped-def]
    dm = _setup(folder_factory(skip={"val": ["dog"]}))
    val = dm.splits["val"]
    assert val.missing_classes == ["dog"]
    by_class = {path.parent.name: label for path, label in zip(val.paths, val.labels, strict=True)}
    # torchvision's ImageFolder would give fox label 1 here; it must stay 2.
    assert by_class == {"cat": 0, "fox": 2}


def test_val_with_unknown_class_is_an_error_naming_it(folder_factory) -> None:  # type: ignore[no-untyped-def]
    root = folder_factory(extra={"val": ["wolf"]})
    with pytest.raises(DataError, match=r"val split has class 'wolf'.*val/wolf"):
        _setup(root)


def test_missing_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _setup(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"train is missing"):
        _setup(tmp_path / "d")


def test_batches_are_normalised_on_transfer(image_folder: Path) -> None:
    dm = _setup(image_folder)
    images, labels, indices = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    normalised, _, _ = dm.on_after_batch_transfer((images, labels, indices), 0)
    assert normalised.dtype == torch.float32
    assert -3 < float(normalised.mean()) < 3


def test_auto_class_weights_are_inverse_frequency(folder_factory) -> None:  # type: ignore[no-untyped-def]
    root = folder_factory(classes=("a", "b"), counts={"train": 4, "val": 2})
    for extra in range(8):  # class a: 12 images, class b: 4
        src = root / "train" / "a" / "a_000.png"
        (root / "train" / "a" / f"copy{extra}.png").write_bytes(src.read_bytes())
    dm = _setup(root, class_weights="auto")
    weights = dm.loss_weights()
    assert weights is not None
    assert torch.allclose(weights, torch.tensor([16 / 24, 16 / 8]))


def test_checkpoint_classes_must_match_train(image_folder: Path) -> None:
    with pytest.raises(DataError, match="differ from the folders"):
        _setup(image_folder, class_names=["cat", "dog", "owl"])


def test_empty_class_folder_in_val_is_a_warning_in_train_an_error(folder_factory: Any) -> None:
    from classifier.datamodule import ImageFolderDataModule
    from classifier.splits import DataError

    root = folder_factory()
    (root / "val" / "owl").mkdir()
    (root / "train" / "owl").mkdir()
    with pytest.raises(DataError, match="without images: owl"):
        ImageFolderDataModule(str(root), num_workers=0).setup("fit")
    (root / "train" / "owl" / "a.png").write_bytes(
        (root / "train" / "cat" / "cat_000.png").read_bytes()
    )
    with pytest.warns(UserWarning, match="empty class folder"):
        ImageFolderDataModule(str(root), num_workers=0).setup("fit")


def test_decode_dali_without_dali_installed_is_a_one_line_error_saying_how_to_install_it(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # an import of it fails
    module = ImageFolderDataModule(str(image_folder), image_size=32, decode="dali")
    with pytest.raises(DataError, match=r"^data.decode: dali needs NVIDIA DALI: pip install"):
        module.setup("fit")  # before the scan
    assert not module.splits


def test_entries_named_like_images_that_are_no_files_are_named_not_skipped_silently(
    image_folder: Path,
) -> None:
    from classifier.splits import read_split

    cat = image_folder / "train" / "cat"
    os.mkfifo(cat / "pipe.jpg")  # reading it would block the walk forever
    (cat / "gone.png").symlink_to(image_folder / "no-such-file.png")
    with pytest.warns(
        UserWarning, match=r"2 entr\(ies\) named like images.*gone\.png; .*pipe\.jpg"
    ):
        split = read_split("train", image_folder / "train", ["cat", "dog", "fox"])
    assert not any(p.name in ("pipe.jpg", "gone.png") for p in split.paths)


def test_a_link_to_itself_is_named_not_a_crash(image_folder: Path) -> None:
    from classifier.splits import read_split

    loop = image_folder / "train" / "cat" / "loop.png"
    loop.symlink_to(loop)  # "too many levels of symbolic links" when followed
    with pytest.warns(UserWarning, match=r"1 entr\(ies\) named like images.*loop\.png"):
        read_split("train", image_folder / "train", ["cat", "dog", "fox"])
