"""Finding wrong labels: the area under the margin on train, confident learning on val/test."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from classifier.label_issues import COLUMNS, confident_suspects, margin_suspects, margins
from tests.conftest import make_folder, run_cli, tiny


def test_the_margin_is_the_given_logit_minus_the_largest_other() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    margin, other = margins(logits, torch.tensor([0, 2]))
    assert margin.tolist() == [1.0, -4.0]
    assert other.tolist() == [2, 1]


def test_negative_mean_margins_are_suspects_lowest_first_and_unseen_images_never() -> None:
    sums = torch.tensor([2.0, -3.0, -1.0, 0.0, -8.0])
    counts = torch.tensor([2.0, 1.0, 2.0, 0.0, 2.0])
    found = margin_suspects(sums, counts, torch.tensor([1, 2, 0, 1, 3]))
    assert found.indices.tolist() == [4, 1, 2]  # means -4, -3, -0.5; image 3 never trained on
    assert found.suggested.tolist() == [3, 2, 0]
    assert found.scores.tolist() == [-4.0, -3.0, -0.5]


def _noisy_probabilities(
    n: int, classes: int, flipped: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities of a model right on about 94 % of images, labels with a share flipped
    at random to another class, and the true classes."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randint(classes, (n,), generator=generator)
    logits = torch.randn(n, classes, generator=generator) * 1.5
    logits[torch.arange(n), truth] += 5.0
    given = truth.clone()
    chosen = torch.randperm(n, generator=generator)[: int(n * flipped)]
    shift = torch.randint(1, classes, (len(chosen),), generator=generator)
    given[chosen] = (truth[chosen] + shift) % classes
    return logits.softmax(1), given, truth


def test_confident_learning_ranks_flipped_labels_first_and_suggests_the_true_class() -> None:
    probs, given, truth = _noisy_probabilities(2000, 10, 0.04)
    flipped = given != truth
    found = confident_suspects(probs, given)
    k = int(flipped.sum())
    assert flipped[found.indices[: 2 * k]].sum() >= 0.9 * k  # within the top 2K rows
    assert flipped[found.indices[:k]].sum() >= 0.8 * k
    assert found.scores.diff().min() >= 0  # lowest self-confidence first
    wrong = flipped[found.indices]
    assert (found.suggested == truth[found.indices])[wrong].float().mean() >= 0.8
    assert 0.5 * k <= found.estimated <= 1.5 * k  # confident learning's count


def test_unknown_labels_and_unused_classes_are_never_suspects() -> None:
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0], [0.5, 0.5, 0.0]])
    found = confident_suspects(probs, torch.tensor([0, 1, -1, 1]))
    assert 2 not in found.indices.tolist()
    assert 2 not in found.suggested.tolist()  # class 2 has no images, hence no threshold


def _label_state(checkpoint: Path) -> dict[str, Any]:
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]
    return next(v for k, v in saved.items() if k.startswith("LabelIssues"))


@pytest.mark.slow
def test_a_resumed_run_keeps_the_training_sums(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 8, "val": 4})
    callback = "--trainer.callbacks+=classifier.LabelIssues"
    cli: Any = run_cli(*tiny("fit", data, "--trainer.max_epochs", "1"), callback)
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    first = _label_state(last)
    assert first["count"].sum() == 24 and first["batches"]["used"] == 3  # 3 classes x 8
    resumed: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "2", "--ckpt_path", str(last)), callback
    )
    second = _label_state(Path(resumed.trainer.log_dir) / "checkpoints" / "last.ckpt")
    assert second["count"].tolist() == (2 * first["count"]).tolist()  # both epochs' margins
    assert second["batches"]["used"] == 6


def _flip(data: Path, split: str, every: int) -> set[str]:
    """Move every ``every``-th image of each class of ``split`` into the next class."""
    classes = sorted(p.name for p in (data / split).iterdir())
    moved = set()
    for i, name in enumerate(classes):
        target = data / split / classes[(i + 1) % len(classes)]
        for source in sorted((data / split / name).iterdir())[::every]:
            destination = target / f"flipped_{source.name}"
            shutil.move(source, destination)
            moved.add(destination.name)
    return moved


@pytest.mark.slow
def test_planted_wrong_labels_are_found_in_train_and_val(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 60, "val": 30, "test": 15})
    flipped = {"train": _flip(data, "train", 15), "val": _flip(data, "val", 10)}
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "6", "--test_after_fit", "true"),
        "--trainer.callbacks+=classifier.LabelIssues",
    )
    run = Path(cli.trainer.log_dir)
    with (run / "label_issues.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    for split in ("train", "val"):
        ranked = [Path(r["path"]).name for r in rows if r["split"] == split]
        k = len(flipped[split])
        top = ranked[: k if split == "train" else 2 * k]
        assert sum(name in flipped[split] for name in top) >= 0.6 * k, (split, ranked[:10])
    summary = json.loads((run / "label_issues.json").read_text())
    assert summary["train"]["batches"]["used"] > 0 and "test" in summary
    assert (run / "label_issues.png").is_file()
    assert "Label issues" in (run / "report.html").read_text()


def test_a_checkpoint_with_foreign_sums_is_not_trusted() -> None:
    from classifier.label_issues import margins_problem

    good = {
        "sum": torch.zeros(3, dtype=torch.float64),
        "count": torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64),
        "other": torch.tensor([0, 1, -1]),
        "batches": {"used": 1, "mixed": 0},
    }
    assert margins_problem(good, 3, 2) is None
    assert "4 training images" in str(margins_problem(good, 4, 2))
    assert "outside" in str(margins_problem({**good, "other": torch.tensor([0, 7, 1])}, 3, 2))
    nan = {**good, "sum": torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)}
    assert "finite" in str(margins_problem(nan, 3, 2))
    unnamed = {**good, "count": torch.ones(3, dtype=torch.float64)}
    assert "largest other" in str(margins_problem(unnamed, 3, 2))
    assert "malformed" in str(margins_problem({**good, "batches": {"used": "x"}}, 3, 2))


def test_a_class_the_split_lacks_can_still_be_the_suggestion() -> None:
    probs = torch.tensor([[0.3, 0.0, 0.7]] + [[0.9, 0.05, 0.05]] * 4 + [[0.1, 0.8, 0.1]] * 3)
    found = confident_suspects(probs, torch.tensor([0] * 5 + [1] * 3))
    assert found.indices.tolist() == [0] and found.suggested.tolist() == [2]


def test_the_report_section_escapes_and_survives_a_foreign_run_folder(tmp_path: Path) -> None:
    from classifier.html_report import write_report
    from classifier.label_issues import _hand_report
    from classifier.report_items import MANIFEST

    script = "<script>alert(1)</script>"
    run = tmp_path / "run"
    run.mkdir()
    summary = {"train": {"images": 1, "suspects": 1, "batches": {"mixed": 2, "used": 1}}}
    _hand_report(run, summary, [("train", script, "a", "b", 0.0, "")])
    assert "<script>" not in write_report(run).read_text()
    manifest = (run / MANIFEST).read_text().replace("mixed by", script)
    (run / MANIFEST).write_text(manifest)
    page = write_report(run).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "Label issues" in page
    for broken in ('{"section": "labels", "kind": "table"}', "[]", '{"section": "x"}'):
        (run / MANIFEST).write_text(manifest + broken + "\n")
        with pytest.raises(ValueError):
            write_report(run)


def test_sums_are_kept_only_for_the_same_training_files_and_labels() -> None:
    from classifier.label_issues import _split_digest

    paths = [Path("train/cat/a.jpg"), Path("train/dog/b.jpg")]
    same = _split_digest((paths, torch.tensor([0, 1]).numpy()))
    assert same == _split_digest((list(paths), [0, 1]))
    assert same != _split_digest((paths, [1, 1]))  # a label changed
    assert same != _split_digest((paths[::-1], [1, 0]))  # another order
