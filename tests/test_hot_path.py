"""The training hot path: no host reads between log intervals, figures within their budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from classifier.figures import DrawBudget
from tests.conftest import full, run_cli, tiny
from tests.probes import HostReads, RunFiles

EVERY = 4


@pytest.mark.slow
def test_no_host_reads_between_log_intervals(folder_factory: Callable[..., Path]) -> None:
    """With every shipped callback (a Rich bar among them), a training step that is not at a log
    interval reads nothing back from the device (on a GPU each read would stall it)."""
    data = folder_factory(counts={"train": 24, "val": 6, "test": 6})  # 9 batches per epoch
    cli: Any = run_cli(
        *full(
            "fit",
            data,
            "--data.num_workers",
            "1",
            "--trainer.max_epochs",
            "2",
            "--trainer.log_every_n_steps",
            str(EVERY),
            "--test_after_fit",
            "false",
            "--trainer.callbacks+=tests.probes.HostReads",
        )
    )
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, HostReads))
    batches = 9
    assert len(probe.reads) == 2 * batches
    for (epoch, batch), reads in probe.reads.items():
        if batch == batches - 1:
            continue  # its window runs into the epoch's end (the val loader starts)
        if (epoch * batches + batch + 1) % EVERY:
            assert reads == [], f"epoch {epoch} batch {batch} read tensors back: {reads}"
        else:  # the log interval: the NaN check and the bar's loss in one read, the loggers
            assert any("classifier/model.py" in r for r in reads), reads
    bar = cli.trainer.progress_bar_metrics
    assert "loss" in bar and "train/loss_step" not in bar  # the bar shows the interval mean


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("classifier.figures.time.monotonic", fake)
    return fake


class FitTrainer:
    class state:  # noqa: N801
        fn = "fit"


def test_draw_budget_keeps_drawing_within_its_share(clock: FakeClock) -> None:
    budget, drawn = DrawBudget(0.1, submit=lambda kind, draw: draw()), []
    budget.restart()

    def draw(label: str, cost: float) -> Callable[[], None]:
        def run() -> None:
            clock.now += cost
            drawn.append(label)

        return run

    trainer: Any = FitTrainer()
    clock.now += 10  # 10 % of 10 s covers the assumed first cost (0.5 s)
    budget.request(trainer, "fig", draw("epoch 1", 2.0))
    clock.now += 10  # 22 s in, 2 s spent: another 2 s would be 18 % > 10 %
    budget.request(trainer, "fig", draw("epoch 2", 2.0))
    clock.now += 10
    budget.request(trainer, "fig", draw("epoch 3", 2.0))
    assert drawn == ["epoch 1"]
    clock.now += 10  # 42 s in: 2 + 2 <= 4.2
    budget.request(trainer, "fig", draw("epoch 4", 2.0))
    assert drawn == ["epoch 1", "epoch 4"]
    clock.now += 1
    budget.request(trainer, "fig", draw("epoch 5", 2.0))
    budget.flush()  # end of fit: the newest waiting figure, not the stale ones
    budget.flush()
    assert drawn == ["epoch 1", "epoch 4", "epoch 5"]
    assert budget.spent == pytest.approx(6.0)


def test_a_short_run_draws_its_first_figure_at_the_end_a_long_one_early(
    clock: FakeClock,
) -> None:
    drawn: list[str] = []
    budget = DrawBudget(0.005, submit=lambda kind, draw: draw())
    budget.restart()
    trainer: Any = FitTrainer()
    clock.now += 10  # a short epoch: 0.5 % of 10 s does not cover a first figure
    budget.request(trainer, "fig", lambda: drawn.append("epoch 1"))
    budget.retry()
    assert drawn == []
    clock.now += 100  # later (the next epoch's start): 0.5 % of 110 s covers 0.5 s
    budget.retry()
    assert drawn == ["epoch 1"]
    budget.flush()
    assert drawn == ["epoch 1"]  # nothing waits any more


def test_figures_of_different_kinds_waiting_together_are_all_drawn(clock: FakeClock) -> None:
    """The calibration's reliability diagram and risk-coverage curve are requested at the
    same moment: the second must not replace the first."""
    budget, drawn = DrawBudget(0.0, submit=lambda kind, draw: draw()), []
    budget.restart()
    trainer: Any = FitTrainer()
    budget.request(trainer, "reliability", lambda: drawn.append("reliability, old"))
    budget.request(trainer, "reliability", lambda: drawn.append("reliability"))
    budget.request(trainer, "risk_coverage", lambda: drawn.append("risk_coverage"))
    budget.flush()
    assert drawn == ["reliability", "risk_coverage"]


def test_draw_budget_zero_draws_only_at_the_end_and_eval_draws_at_once(clock: FakeClock) -> None:
    budget, drawn = DrawBudget(0.0, submit=lambda kind, draw: draw()), []
    budget.restart()
    trainer: Any = FitTrainer()
    budget.request(trainer, "fig", lambda: drawn.append("fit"))
    assert drawn == []
    budget.flush()
    assert drawn == ["fit"]
    trainer.state = type("state", (), {"fn": "test"})
    budget.request(trainer, "fig", lambda: drawn.append("test"))
    assert drawn == ["fit", "test"]


@pytest.mark.slow
@pytest.mark.parametrize(("share", "drawn_after_epoch_1"), [("0", False), ("1", True)])
def test_figures_wait_for_the_end_of_fit_when_over_budget(
    image_folder: Path, share: str, drawn_after_epoch_1: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CSV files follow every epoch; PNGs follow within the budget (drawn in the background,
    so only the share-0 case can be checked mid-run), and at the end of fit."""
    from classifier import figures as plots

    kinds: list[str] = []
    submit = plots._WORKER.submit
    monkeypatch.setattr(plots._WORKER, "submit", lambda k, d: (kinds.append(k), submit(k, d)))
    cli: Any = run_cli(
        *tiny("fit", image_folder),
        "--trainer.callbacks+=classifier.ConfusionMatrix",
        f"--trainer.callbacks.init_args.plot_time_share={share}",
        "--trainer.callbacks+=tests.probes.RunFiles",
    )
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, RunFiles))
    after_first = probe.at_epoch_start[1]
    assert "confusion_matrix_val.csv" in after_first
    if not drawn_after_epoch_1:
        assert "confusion_matrix_val.png" not in after_first
    matrices = [k for k in kinds if k.startswith("val@")]
    assert len(matrices) == (2 if drawn_after_epoch_1 else 1)  # each epoch, or the end
    run = Path(cli.trainer.log_dir)
    assert (run / "confusion_matrix_val.png").is_file()
    assert (run / "confusion_matrix_val_normalized.png").is_file()
