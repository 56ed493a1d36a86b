"""SafeCheckpointIO: atomic writes (optionally in the background, from a snapshot), one file
for one training state, amending a checkpoint without touching its linked twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifier.checkpoint import SafeCheckpointIO, amend_checkpoint, read_checkpoint


def _checkpoint(step: int, weight: torch.Tensor) -> dict[str, object]:
    loops = {"fit_loop": {"epoch_progress": {"total": {"completed": step}}}}
    return {"epoch": 0, "global_step": step, "loops": loops, "state_dict": {"w": weight}}


def test_background_writes_are_snapshots_and_loads_wait_for_them(tmp_path: Path) -> None:
    io = SafeCheckpointIO(asynchronous=True)
    weight = torch.zeros(1000)
    io.save_checkpoint(_checkpoint(1, weight), tmp_path / "a.ckpt")
    weight += 1  # training goes on while the file is written
    loaded = io.load_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], torch.zeros(1000))
    io.teardown()


def test_the_same_state_saved_twice_is_one_file(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
    weight = torch.arange(10.0)
    io.save_checkpoint(_checkpoint(4, weight), tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(4, weight), tmp_path / "last.ckpt")  # same epoch, step, loops
    io.save_checkpoint(_checkpoint(5, weight), tmp_path / "other.ckpt")
    io.teardown()
    best, last, other = (tmp_path / n for n in ("best.ckpt", "last.ckpt", "other.ckpt"))
    assert best.stat().st_ino == last.stat().st_ino != other.stat().st_ino
    assert torch.load(last, weights_only=True)["global_step"] == 4


def test_a_later_write_never_changes_the_linked_file(tmp_path: Path) -> None:
    """best.ckpt and last.ckpt share a file after one validation; the next epoch's last.ckpt
    replaces the link, and best.ckpt keeps its weights."""
    io = SafeCheckpointIO()
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), tmp_path / "last.ckpt")
    io.save_checkpoint(_checkpoint(8, torch.ones(3)), tmp_path / "last.ckpt")
    io.teardown()
    assert torch.equal(
        torch.load(tmp_path / "best.ckpt", weights_only=True)["state_dict"]["w"], torch.zeros(3)
    )
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_weights_only_and_full_checkpoints_are_never_linked(tmp_path: Path) -> None:
    """Same epoch and step, but one file lacks the optimizer state: two files."""
    io = SafeCheckpointIO()
    full = {**_checkpoint(4, torch.zeros(3)), "optimizer_states": [{"step": torch.ones(())}]}
    weights = {k: v for k, v in full.items() if k != "optimizer_states"}
    assert set(full) - set(weights) == {"optimizer_states"}
    io.save_checkpoint(weights, tmp_path / "best.ckpt")
    io.save_checkpoint(full, tmp_path / "last.ckpt")
    io.teardown()
    assert (tmp_path / "best.ckpt").stat().st_ino != (tmp_path / "last.ckpt").stat().st_ino


def test_a_failed_write_does_not_hide_the_exception_being_handled(tmp_path: Path) -> None:
    io = SafeCheckpointIO(asynchronous=True)
    # The write fails on the background thread (a NUL byte in the name).
    io.save_checkpoint(_checkpoint(1, torch.zeros(3)), tmp_path / "missing" / "x" / "\0bad")
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="write failed"):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            io.teardown()  # as Lightning does while handling SIGTERM/Ctrl-C: warns, no masking
            raise


def _trainer(io: SafeCheckpointIO) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=io))


@pytest.mark.parametrize("asynchronous", [False, True])
def test_amending_best_leaves_its_linked_twin_alone(tmp_path: Path, asynchronous: bool) -> None:
    """The calibration writes the temperature into best.ckpt, which may be a hard link of
    last.ckpt: last.ckpt keeps its contents and no later save is linked to the amended file."""
    io = SafeCheckpointIO(asynchronous=asynchronous)
    trainer = _trainer(io)
    best, last = str(tmp_path / "best.ckpt"), str(tmp_path / "last.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), best)
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), last)  # linked to best
    amend_checkpoint(trainer, best, lambda c: {**c, "temperature": 0.5})
    assert read_checkpoint(trainer, best)["temperature"] == 0.5
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), last)  # never linked to the amended file
    io.teardown()
    on_disk = {n: torch.load(tmp_path / n, weights_only=True) for n in ("best.ckpt", "last.ckpt")}
    assert on_disk["best.ckpt"]["temperature"] == 0.5
    assert "temperature" not in on_disk["last.ckpt"]
    assert (tmp_path / "best.ckpt").stat().st_ino != (tmp_path / "last.ckpt").stat().st_ino


def test_a_synchronous_save_is_on_disk_when_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default writer holds nothing back: the file is complete when save returns, and a
    failed write fails the save itself."""
    io = SafeCheckpointIO()
    io.save_checkpoint(_checkpoint(4, torch.ones(3)), tmp_path / "best.ckpt")
    assert torch.equal(
        torch.load(tmp_path / "best.ckpt", weights_only=True)["state_dict"]["w"], torch.ones(3)
    )
    assert io._executor is None  # no thread, no snapshot kept

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(_checkpoint(5, torch.ones(3)), tmp_path / "last.ckpt")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_background_write_is_raised_by_the_next_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibration and export read best.ckpt back; if writing it failed (a full disk), the
    read raises, so the run fails instead of calibrating a checkpoint that is not on disk."""
    from classifier import checkpoint as checkpoint_module

    def failing(checkpoint: dict[str, object], target: str) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", failing)
    io = SafeCheckpointIO(asynchronous=True)
    best = str(tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.ones(3)), best)
    with pytest.raises(OSError, match="No space left"):
        read_checkpoint(_trainer(io), best)


@pytest.mark.slow
def test_background_writes_are_chosen_in_the_config(image_folder: Path, tmp_path: Path) -> None:
    """Synchronous by default; ``trainer.plugins`` with ``classifier.SafeCheckpointIO`` and
    ``asynchronous: true`` writes in the background, and every checkpoint still loads."""
    from typing import Any

    from classifier.checkpoint import load_checkpoint
    from tests.conftest import run_cli, tiny

    plain: Any = run_cli(*tiny("fit", image_folder, "--trainer.max_epochs", "1"))
    assert plain.trainer.strategy.checkpoint_io.asynchronous is False
    layer = tmp_path / "background.yaml"
    layer.write_text(
        "trainer:\n  plugins:\n    - class_path: classifier.SafeCheckpointIO\n"
        "      init_args: {asynchronous: true}\n"
    )
    cli: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.max_epochs", "2"), "--config", str(layer)
    )
    io = cli.trainer.strategy.checkpoint_io
    assert isinstance(io, SafeCheckpointIO) and io.asynchronous
    best = cli.trainer.checkpoint_callback.best_model_path
    assert load_checkpoint(best)["epoch"] in (0, 1)
    assert not list(Path(best).parent.glob(".*.tmp"))
