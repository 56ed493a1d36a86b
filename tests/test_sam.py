"""Sharpness-aware minimisation: two passes per step, the base optimizer's state, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from classifier.errors import ConfigError
from classifier.model import ImageClassifier
from classifier.sam import SAM, check_sam_trainer
from tests.conftest import make_folder, run_cli, tiny


def _problem() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3), torch.randn(16, 4), torch.randint(3, (16,))


def test_a_step_takes_the_gradient_at_the_perturbed_weights() -> None:
    net, x, y = _problem()
    start = [p.detach().clone() for p in net.parameters()]
    rho, lr = 0.05, 0.1
    optimizer = SAM(torch.optim.SGD(net.parameters(), lr=lr), rho=rho)
    calls = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        calls.append(optimizer.perturbed)
        return loss

    optimizer.step(closure)
    assert calls == [False, True]  # two forward-backward passes, the second perturbed

    # The same step by hand: gradient g at w, gradient at w + rho g/|g|, applied at w.
    reference, _, _ = _problem()
    loss = torch.nn.functional.cross_entropy(reference(x), y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads, strict=True):
            p.add_(g * rho / norm)
    loss = torch.nn.functional.cross_entropy(reference(x), y)
    sharp = torch.autograd.grad(loss, list(reference.parameters()))
    for p, w, g in zip(net.parameters(), start, sharp, strict=True):
        assert torch.allclose(p, w - lr * g, atol=1e-6)


def test_the_checkpoint_holds_the_base_optimizers_state() -> None:
    net, x, y = _problem()
    optimizer = SAM(torch.optim.AdamW(net.parameters(), lr=0.01), rho=0.05)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)
    saved = optimizer.state_dict()
    assert saved == optimizer.base.state_dict() and saved["state"]  # Adam's moments
    other = SAM(torch.optim.AdamW(net.parameters(), lr=0.01), rho=0.05)
    other.load_state_dict(saved)
    assert torch.equal(
        other.base.state[next(net.parameters())]["exp_avg"], saved["state"][0]["exp_avg"]
    )
    for group in other.param_groups:  # a schedule changes the base's learning rate
        group["lr"] = 0.5
    assert other.base.param_groups[0]["lr"] == 0.5


def test_settings_sam_cannot_honour_are_refused() -> None:
    with pytest.raises(ConfigError, match="bf16-mixed"):
        check_sam_trainer(SimpleNamespace(precision="16-mixed", accumulate_grad_batches=1))
    check_sam_trainer(SimpleNamespace(precision="32-true", accumulate_grad_batches=2))
    check_sam_trainer(SimpleNamespace(precision="bf16-mixed", accumulate_grad_batches=1))
    with pytest.raises(RuntimeError, match="closure"):
        SAM(torch.optim.SGD(_problem()[0].parameters(), lr=0.1)).step()


@pytest.mark.slow
def test_sam_trains_with_clipping_bf16_and_ema(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 24, "val": 10})
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "5"),
        "--model.optimizer=sam",
        "--model.sam_base=adamw",
        "--trainer.gradient_clip_val=1.0",
        "--trainer.precision=bf16-mixed",
        "--trainer.callbacks+=classifier.EMA",
        "--trainer.callbacks+=classifier.LabelIssues",
    )
    assert cli.trainer.global_step == 5 * 9  # one optimizer step per batch (72 images / 8)
    top1 = float(cli.trainer.callback_metrics["val/top1"])
    assert top1 > 0.6  # three classes: chance is 1/3
    run = Path(cli.trainer.log_dir)
    issues = json.loads((run / "label_issues.json").read_text())
    assert issues["train"]["scored_images"] == 72  # margins from the first pass of each step


def _vit_problem() -> tuple[torch.Tensor, torch.Tensor, ImageClassifier]:
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 160, 160), torch.randint(3, (8,))
    model = ImageClassifier(
        "test_vit", ["a", "b", "c"], pretrained=False, optimizer="sam", lr=0.5, scheduler="constant"
    )
    return images, labels, model


def _one_sam_step(
    accumulate: int, clip: float | None, algorithm: str = "norm"
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights before and after one SAM step of a ViT (no batch statistics) over the
    same 8 images, in micro-batches of ``8 // accumulate``."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    images, labels, model = _vit_problem()
    loader = DataLoader(TensorDataset(images, labels, torch.arange(8)), batch_size=8 // accumulate)
    trainer = pl.Trainer(
        max_steps=1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = [p.detach().clone() for p in model.model.parameters()]
    trainer.fit(model, train_dataloaders=loader)
    return before, [p.detach().clone() for p in model.model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("clip", [None, 0.05])
def test_an_accumulated_sam_step_is_the_step_of_the_whole_window(clip: float | None) -> None:
    """Micro-batches of 2 accumulated 4 times take the step one batch of 8 takes: the
    perturbation from the window's gradient, the second pass over every micro-batch, clipping
    once on the whole sum (0.05 clips: the gradient norm here is about 1)."""
    initial, whole = _one_sam_step(1, clip)
    _, accumulated = _one_sam_step(4, clip)
    assert not all(torch.allclose(a, b) for a, b in zip(initial, whole, strict=True))
    for a, b in zip(whole, accumulated, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.slow
def test_clipping_by_value_leaves_the_ascent_direction_alone() -> None:
    """Clipping applies to the gradient the step takes (the second pass's), not to the first
    pass's, whose direction sets the perturbation: clipped by value it would point elsewhere."""
    from classifier.optim import optimization

    _, trained = _one_sam_step(1, 0.001, "value")
    images, labels, model = _vit_problem()
    optimizer = optimization(model.model, model.hparams, 1, 1)["optimizer"]

    def closure() -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        if optimizer.perturbed:
            torch.nn.utils.clip_grad_value_(model.model.parameters(), 0.001)
        return loss

    optimizer.zero_grad()
    optimizer.step(closure)
    for a, b in zip(model.model.parameters(), trained, strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


@pytest.mark.slow
def test_a_non_finite_second_pass_stops_the_run_before_any_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_attacks import assert_one_error_line, run_entry

    data = make_folder(tmp_path / "data", counts={"train": 8, "val": 4})
    os.chdir(tmp_path)
    args = [*tiny("fit", data, "--trainer.max_epochs", "1"), "--model.optimizer", "sam"]
    args += ["--trainer.limit_train_batches", "1"]  # one step: only its second pass is inf
    code, err = run_entry(capsys, *args, "--model.sam_rho", "1e30")  # the far side: inf
    assert_one_error_line(code, err, "NaN or infinite")
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_the_history_loss_is_the_logged_one_with_sam_and_accumulation(tmp_path: Path) -> None:
    """Lightning divides the step's ``loss`` by the accumulation and SAM's last closure call
    is the second pass: history.csv averages ``batch_loss``, the first pass's, as logged."""
    import csv

    data = make_folder(tmp_path / "data", counts={"train": 16, "val": 4})
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "1"),
        "--model.optimizer=sam",
        "--trainer.accumulate_grad_batches=2",
        "--trainer.callbacks+=classifier.TrainingHistory",
    )
    run = Path(cli.trainer.log_dir)
    history = list(csv.DictReader((run / "history.csv").open()))
    logged = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["train/loss_epoch"]]
    assert float(history[0]["train_loss"]) == pytest.approx(float(logged[0]["train/loss_epoch"]))


def test_settings_sam_cannot_use_are_one_line_before_the_scan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_attacks import assert_one_error_line, run_entry

    data = make_folder(tmp_path / "data", counts={"train": 2, "val": 1})
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path / "cache"))
    for extra, needle in (
        (["--model.optimizer", "sam", "--model.sam_rho", "0"], "sam_rho must be positive"),
        (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches must be 1"),
        (["--trainer.precision", "bf16-true"], "use bf16-mixed"),
        (["--trainer.precision", "16-true"], "use bf16-mixed"),
    ):
        code, err = run_entry(capsys, *tiny("fit", data), *extra)
        assert_one_error_line(code, err, needle)
    assert not (tmp_path / "cache").exists()  # nothing was scanned


@pytest.mark.slow
def test_sam_with_accumulation_trains_the_demo_digits() -> None:
    from tests.conftest import demo_digits

    cli: Any = run_cli(
        *tiny("fit", demo_digits(), "--trainer.max_epochs", "2"),
        "--model.optimizer=sam",
        "--model.sam_base=adamw",
        "--trainer.accumulate_grad_batches=2",
        "--trainer.gradient_clip_val=1.0",
        "--trainer.precision=bf16-mixed",
        "--trainer.callbacks+=classifier.EMA",
        "--data.batch_size=32",
        "--trainer.limit_train_batches=40",
        "--trainer.limit_val_batches=8",
    )
    assert cli.trainer.global_step == 2 * 20  # 40 micro-batches of 32, two per step
    top1 = float(cli.trainer.callback_metrics["val/top1"])
    assert top1 > 0.5, top1  # ten classes: chance is 0.1
