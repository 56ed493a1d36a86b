"""When per-epoch outputs are due: one rule for every drawing callback."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from classifier.figures import epoch_due, last_epoch


def _trainer(epoch: int, max_epochs: int | None, sanity: bool = False) -> Any:
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, sanity_checking=sanity)


def test_every_n_epochs_and_always_the_last() -> None:
    assert [epoch_due(_trainer(e, 7), 3) for e in range(7)] == [
        False,
        False,
        True,
        False,
        False,
        True,
        True,  # the last epoch, though not a multiple of 3
    ]


def test_a_run_bounded_by_steps_has_no_last_epoch() -> None:
    # Lightning sets max_epochs=-1 when only max_steps bounds the run: not "every epoch is last".
    assert not last_epoch(_trainer(0, -1)) and not last_epoch(_trainer(0, None))
    assert [epoch_due(_trainer(e, -1), 2) for e in range(4)] == [False, True, False, True]


def test_never_during_the_sanity_check() -> None:
    assert not epoch_due(_trainer(0, 1, sanity=True), 1)
