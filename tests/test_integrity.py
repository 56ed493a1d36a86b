"""No result is silently wrong: unreadable files, stale caches, links, odd names and sizes, and
exports that stay where they belong."""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.datamodule import ImageFolderDataModule
from classifier.image_dataset import load_rgb
from classifier.splits import Visited, walk_images
from tests.conftest import draw, make_folder, run_cli, tiny

GARBAGE = b"this is not an image any more"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _fit(data: Path, *extra: str) -> Any:
    return run_cli(*tiny("fit", data, "--trainer.max_epochs", "1", *extra))


@pytest.mark.slow
def test_files_unreadable_after_the_scan_are_counted_once_and_named(image_folder: Path) -> None:
    (image_folder / "train" / "cat" / "cat_000.png").write_bytes(GARBAGE)
    with pytest.warns(UserWarning, match="1 train image.*replaced by the next readable"):
        cli: Any = _fit(image_folder, "--data.scan", "false")
    assert cli.trainer.callback_metrics["train/unreadable"] == 1
    best = cli.trainer.checkpoint_callback.best_model_path

    broken = image_folder / "test" / "dog" / "dog_000.png"
    broken.write_bytes(GARBAGE)
    with pytest.warns(UserWarning, match="1 test image.*left out of the metrics"):
        tested: Any = run_cli("test", "--ckpt_path", best, "--data.scan", "false")
    assert tested.trainer.callback_metrics["test/unreadable"] == 1
    per_class = _rows(Path(tested.trainer.log_dir) / "test_per_class.csv")
    assert sum(int(r["support"]) for r in per_class) == 17  # 18 files, 1 unreadable

    predicted: Any = run_cli(
        "predict",
        "--ckpt_path",
        best,
        "--data.scan",
        "false",
        "--data.predict_dir",
        str(image_folder / "test"),
    )
    rows = _rows(Path(predicted.trainer.log_dir) / "predictions.csv")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 18  # no file lost, none listed twice
    marked = {r["path"]: r["error"] for r in rows}
    assert marked.pop(str(broken)) == "unreadable"
    assert set(marked.values()) == {""}
    assert next(r for r in rows if r["path"] == str(broken))["predicted"] == ""


def test_pixel_limit_applies_at_every_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = draw(0, np.random.default_rng(0))
    for name in ("a.png", "b.jpg", "c.webp"):
        image.save(tmp_path / name)
        assert load_rgb(tmp_path / name).shape == (3, 40, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("a.png", "b.jpg", "c.webp"):
        with pytest.raises(Image.DecompressionBombError, match="40x40"):
            load_rgb(tmp_path / name)


def test_symlink_fan_out_is_walked_once(tmp_path: Path) -> None:
    real = make_folder(tmp_path / "d", counts={"train": 3}, classes=("cat",)) / "train" / "cat"
    levels = [tmp_path / f"level{i}" for i in range(24)]
    for level in levels:
        level.mkdir()
    for here, below in itertools.pairwise(levels):
        for link in ("a", "b"):  # 2**23 paths to the bottom without a visited set
            (here / link).symlink_to(below)
    (levels[-1] / "images").symlink_to(real)
    (levels[-1] / "again.png").symlink_to(real / "cat_000.png")
    visited = Visited()
    found = walk_images(levels[0], visited)
    assert len(found) == 3
    repeats = {(p.name, q.name) for p, q in visited.repeats}
    assert ("cat_000.png", "again.png") in repeats  # the file link, counted once
    assert ("b", "a") in repeats and len(visited.repeats) == 1 + 23  # each level walked once


def test_a_file_in_two_splits_is_reported(image_folder: Path) -> None:
    os.link(image_folder / "train" / "cat" / "cat_000.png", image_folder / "val" / "cat" / "x.png")
    with pytest.warns(UserWarning, match=r"1 image group\(s\) appear in train and in val"):
        ImageFolderDataModule(str(image_folder), num_workers=0).setup("fit")
    # Without the pre-scan's hashes, the link itself is still found.
    with pytest.warns(UserWarning, match=r"1 file\(s\) are in two splits"):
        ImageFolderDataModule(str(image_folder), num_workers=0, scan=False).setup("fit")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="bytes file names")
def test_names_that_are_not_utf8_are_written_escaped(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 6, "val": 3})
    for split in ("train", "val"):
        os.rename(os.fsencode(data / split / "fox"), os.fsencode(data / split) + b"/f\xffx")
    os.rename(os.fsencode(data / "val" / "cat" / "cat_000.png"), os.fsencode(data) + b"/c\xe9t.png")
    shutil.copytree(os.fsencode(data / "val"), os.fsencode(tmp_path / "predict"))
    cli: Any = _fit(data)
    run = Path(cli.trainer.log_dir)
    assert "f\\xffx" in (run / "val_per_class.csv").read_text()
    best = cli.trainer.checkpoint_callback.best_model_path
    (tmp_path / "predict" / "odd").mkdir()
    os.rename(
        os.fsencode(tmp_path / "predict" / "cat" / "cat_001.png"),
        os.fsencode(tmp_path / "predict" / "odd") + b"/n\xe9w.png",
    )
    predicted: Any = run_cli(
        "predict", "--ckpt_path", best, "--data.predict_dir", str(tmp_path / "predict")
    )
    text = (Path(predicted.trainer.log_dir) / "predictions.csv").read_text()
    assert "n\\xe9w.png" in text and "f\\xffx" in text


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["none", "weighted"])
def test_a_last_batch_of_one_image_trains(folder_factory: Any, sampler: str) -> None:
    data = folder_factory(counts={"train": 3, "val": 2})  # 9 images = 1 x 8 + 1
    cli: Any = _fit(data, "--data.sampler", sampler)
    assert cli.trainer.global_step == 1  # the partial batch of one is dropped, not crashed on


@pytest.mark.slow
def test_export_stays_beside_its_run_and_never_overwrites(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from classifier.export import main as export_main

    cli: Any = _fit(image_folder)
    run = Path(cli.trainer.log_dir)
    best = str(run / "checkpoints" / "best.ckpt")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / ".model.onnx.tmp").symlink_to(victim)  # the old predictable temporary name
    export_main(["--ckpt_path", best, "--verify_images", "6"])
    assert (run / "model.onnx").is_file() and victim.read_text() == "keep me"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]

    with pytest.raises(SystemExit):
        export_main(["--ckpt_path", best])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "--overwrite true" in err[-1]
    export_main(["--ckpt_path", best, "--verify_images", "0", "--overwrite", "true"])

    elsewhere = tmp_path / "downloads" / "deep"
    elsewhere.mkdir(parents=True)
    shutil.copy(best, elsewhere / "mine.ckpt")
    export_main(["--ckpt_path", str(elsewhere / "mine.ckpt"), "--verify_images", "0"])
    assert (elsewhere / "mine.onnx").is_file()
    assert (
        not (tmp_path / "model.onnx").exists()
        and not (tmp_path / "downloads" / "model.onnx").exists()
    )
    assert torch.load(best, weights_only=True)["class_names"] == ["cat", "dog", "fox"]


@pytest.mark.slow
def test_checkpoint_given_twice_is_refused_not_mixed(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_attacks import assert_one_error_line, run_entry

    run = Path(_fit(image_folder).trainer.log_dir) / "checkpoints"
    other = tmp_path / "other.yaml"
    other.write_text(f"ckpt_path: {run / 'last.ckpt'}\n")
    code, err = run_entry(capsys, "test", "--ckpt_path", str(run / "best.ckpt"), "-c", str(other))
    assert_one_error_line(code, err, "given twice")
    # A root-level config before the subcommand still gets the checkpoint's arguments.
    root = tmp_path / "root.yaml"
    root.write_text("test:\n  seed_everything: 3\n")
    tested: Any = run_cli("-c", str(root), "test", "--ckpt_path", str(run / "last.ckpt"))
    assert tested.model.class_names == ["cat", "dog", "fox"]
    assert tested.model.hparams["model_name"] == "test_resnet"  # from the checkpoint


def test_a_jpeg_whose_header_hides_its_size_goes_to_the_checked_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FF 00`` right after the start marker: libjpeg skips it as junk, a naive header walk
    reads it as a segment and lands on a fake 16x16 frame header hidden in an APP segment."""
    import io
    import struct

    buffer = io.BytesIO()
    Image.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(buffer, "JPEG")
    real = buffer.getvalue()
    fake = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    app = b"\xff\xe5" + struct.pack(">H", 6 + len(fake)) + b"abcd" + fake
    crafted = tmp_path / "crafted.jpg"
    crafted.write_bytes(b"\xff\xd8\xff\x00" + struct.pack(">H", 10) + app + real[2:])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 120 x 100 = 12,000 pixels
    with pytest.raises(Image.DecompressionBombError):
        load_rgb(crafted)


def test_a_folder_linked_under_two_classes_is_an_error(folder_factory: Any) -> None:
    from classifier.splits import DataError

    root = folder_factory()
    (root / "train" / "dog" / "sub").mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(root / "train" / "dog" / "dog_000.png", root / "train" / "dog" / "sub" / name)
    (root / "train" / "cat" / "borrowed").symlink_to(root / "train" / "dog" / "sub")
    with pytest.raises(DataError, match="under two classes"):
        ImageFolderDataModule(str(root), num_workers=0).setup("fit")


@pytest.mark.slow
def test_two_exports_in_one_folder_keep_their_own_descriptions(
    image_folder: Path, tmp_path: Path
) -> None:
    import json

    from classifier.export import main as export_main

    best = str(Path(_fit(image_folder).trainer.log_dir) / "checkpoints" / "best.ckpt")
    out = tmp_path / "exports"
    export_main(["--ckpt_path", best, "--output", str(out / "fp.onnx"), "--verify_images", "0"])
    u8 = ["--output", str(out / "u8.onnx"), "--uint8_input", "true", "--verify_images", "0"]
    export_main(["--ckpt_path", best, *u8])
    assert json.loads((out / "fp.labels_mapping.json").read_text())["input_dtype"] == "float32"
    assert json.loads((out / "u8.labels_mapping.json").read_text())["input_dtype"] == "uint8"
