"""A validation split held out of train/ when there is no val/: stratified, duplicates kept
together, and the same images on resume, validate and test."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifier.folder_splits import hold_out
from classifier.splits import DataError
from tests.conftest import draw, make_folder, run_cli, tiny


def test_each_class_gives_its_share_to_within_one_image() -> None:
    labels = [0] * 50 + [1] * 13 + [2] * 7 + [3] * 2 + [4]
    held = hold_out(labels, [], 0.2, seed=3)
    got = Counter(labels[i] for i in held)
    for label, count in Counter(labels).items():
        expected = 0 if count < 2 else min(count - 1, max(1, round(0.2 * count)))
        assert abs(got[label] - expected) <= 1, (label, got[label], expected)
    assert hold_out(labels, [], 0.2, seed=3) == held
    assert hold_out(labels, [], 0.2, seed=4) != held


def test_duplicate_groups_never_straddle_the_split() -> None:
    labels = [0] * 40 + [1] * 40
    groups = [[0, 1, 2], [10, 11], [41, 42, 43, 44], [60, 61]]
    for seed in range(20):
        held = set(hold_out(labels, groups, 0.25, seed))
        for group in groups:
            assert len({i in held for i in group}) == 1, (seed, group)
        assert abs(sum(1 for i in held if labels[i] == 0) - 10) <= 1


def _manifest(run: Path) -> dict[str, str]:
    return {r["path"]: r["split"] for r in csv.DictReader((run / "split.csv").open())}


@pytest.mark.slow
def test_fit_holds_out_and_resume_validate_test_reuse_it(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 10, "test": 3})
    shutil.copy(data / "train" / "dog" / "dog_000.png", data / "train" / "dog" / "copy.png")
    args = tiny("fit", data, "--data.val_fraction", "0.2", "--trainer.max_epochs", "1")
    first: Any = run_cli(*args)
    run = Path(first.trainer.log_dir)
    manifest = _manifest(run)
    val = sorted(p for p, s in manifest.items() if s == "val")
    assert Counter(p.split("/")[0] for p in val) == {"cat": 2, "dog": 2, "fox": 2}
    assert manifest["dog/copy.png"] == manifest["dog/dog_000.png"]  # a copy stays beside it

    # New training images arrive; resuming keeps the validation images of the checkpoint.
    for i in range(4):
        draw(0, np.random.default_rng(i)).save(data / "train" / "cat" / f"n{i}.png")
    resumed: Any = run_cli(*tiny("fit", data, "--data.val_fraction", "0.2"), "--ckpt_path", "last")
    held = resumed.datamodule.splits["val"]
    assert sorted(p.relative_to(held.root).as_posix() for p in held.paths) == val
    assert {f"cat/n{i}.png" for i in range(4)} <= {
        p for p, s in _manifest(Path(resumed.trainer.log_dir)).items() if s == "train"
    }

    best = first.trainer.checkpoint_callback.best_model_path
    validated: Any = run_cli("validate", "--ckpt_path", best)
    assert (
        sorted(
            p.relative_to(validated.datamodule.splits["val"].root).as_posix()
            for p in validated.datamodule.splits["val"].paths
        )
        == val
    )
    # The held-out images are not files "in two splits at once" (they are one folder's).
    assert not [w for w in recwarn if "two splits at once" in str(w.message)]
    tested: Any = run_cli("test", "--ckpt_path", best)
    assert tested.trainer.callback_metrics["test/top1"] >= 0


def test_a_missing_val_folder_says_how_to_get_a_split(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 4})
    with pytest.raises(DataError, match=r"--data\.val_fraction"):
        run_cli(*tiny("fit", data))
    both = make_folder(tmp_path / "both", counts={"train": 4, "val": 2})
    with pytest.raises(DataError, match="no val/ folder"):
        run_cli(*tiny("fit", both, "--data.val_fraction", "0.2"))


def test_a_group_too_big_for_its_share_is_split_with_a_warning() -> None:
    labels = [0] * 20
    with pytest.warns(UserWarning, match="larger than their class's validation share"):
        held = hold_out(labels, [list(range(12))], 0.2, seed=0)
    assert len(held) == 4


def test_fractions_outside_zero_one_and_empty_shares_are_errors(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 4})
    with pytest.raises(DataError, match="between 0 and 1"):
        run_cli(*tiny("fit", data, "--data.val_fraction", "10"))
    single = make_folder(tmp_path / "single", counts={"train": 1})
    with pytest.raises(DataError, match="two or more images"):
        run_cli(*tiny("fit", single, "--data.val_fraction", "0.5"))
