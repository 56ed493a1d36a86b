"""SafeCheckpointIO: background writes from a snapshot, one file for one training state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifier.checkpoint_io import SafeCheckpointIO, amend_checkpoint, read_back


def _checkpoint(step: int, weight: torch.Tensor) -> dict[str, object]:
    loops = {"fit_loop": {"epoch_progress": {"total": {"completed": step}}}}
    return {"epoch": 0, "global_step": step, "loops": loops, "state_dict": {"w": weight}}


def test_writes_are_snapshots_and_loads_wait_for_them(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
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
    io = SafeCheckpointIO()
    full = _checkpoint(4, torch.zeros(3))
    weights = {k: v for k, v in full.items() if k != "optimizer_states"} | {"weights_only": True}
    io.save_checkpoint(weights, tmp_path / "best.ckpt")
    io.save_checkpoint(full, tmp_path / "last.ckpt")
    io.teardown()
    assert (tmp_path / "best.ckpt").stat().st_ino != (tmp_path / "last.ckpt").stat().st_ino


def test_a_failed_write_does_not_hide_the_exception_being_handled(tmp_path: Path) -> None:
    import pytest

    io = SafeCheckpointIO()
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


def test_the_newest_checkpoint_is_read_back_from_memory_and_amended_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibration and export read best.ckpt right after it was saved: from memory, never a
    half-written file; amending best.ckpt (the temperature) leaves its linked twin alone."""
    from classifier import checkpoint_io

    io = SafeCheckpointIO()
    trainer = _trainer(io)
    best, last = str(tmp_path / "best.ckpt"), str(tmp_path / "last.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), best)
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), last)  # linked to best
    monkeypatch.setattr(checkpoint_io, "load_checkpoint", _no_disk_reads)
    held = read_back(trainer, best)
    assert read_back(trainer, last) is held
    amended = {**held, "state_dict": {**held["state_dict"], "temperature": torch.tensor(0.5)}}
    amend_checkpoint(trainer, best, amended)
    assert float(read_back(trainer, best)["state_dict"]["temperature"]) == 0.5
    assert "temperature" not in read_back(trainer, last)["state_dict"]
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), last)  # never linked to the amended file
    io.teardown()
    on_disk = {n: torch.load(tmp_path / n, weights_only=True) for n in ("best.ckpt", "last.ckpt")}
    assert float(on_disk["best.ckpt"]["state_dict"]["temperature"]) == 0.5
    assert "temperature" not in on_disk["last.ckpt"]["state_dict"]
    assert (tmp_path / "best.ckpt").stat().st_ino != (tmp_path / "last.ckpt").stat().st_ino


def test_an_older_checkpoint_is_read_from_disk_after_the_queued_writes(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
    trainer = _trainer(io)
    best, last = str(tmp_path / "best.ckpt"), str(tmp_path / "last.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.zeros(3)), best)
    io.save_checkpoint(_checkpoint(8, torch.ones(3)), last)  # the newest: best is not held
    assert io.held(best) is None and io.held(last) is not None
    assert torch.equal(read_back(trainer, best)["state_dict"]["w"], torch.zeros(3))
    io.remove_checkpoint(last)
    assert io.held(last) is None
    io.teardown()


def test_the_newest_checkpoint_stays_readable_after_lightnings_teardown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning tears the strategy down before ``on_fit_end``, where the export reads."""
    from classifier import checkpoint_io

    io = SafeCheckpointIO()
    best = str(tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.ones(3)), best)
    io.teardown()  # every write is on disk
    assert (tmp_path / "best.ckpt").is_file()
    monkeypatch.setattr(checkpoint_io, "load_checkpoint", _no_disk_reads)
    assert torch.equal(read_back(_trainer(io), best)["state_dict"]["w"], torch.ones(3))


def _no_disk_reads(path: object) -> dict[str, object]:
    raise AssertionError(f"{path} was read from disk")


def test_a_failed_write_is_raised_by_the_read_back_not_hidden_by_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibration and export read the newest checkpoint from memory; if writing it failed
    (a full disk), reading it back raises, so the run fails instead of calibrating and
    exporting a checkpoint that is not on disk."""
    from classifier import checkpoint_io

    def failing(checkpoint: dict[str, object], target: str) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_io, "_save_file", failing)
    io = SafeCheckpointIO()
    best = str(tmp_path / "best.ckpt")
    io.save_checkpoint(_checkpoint(4, torch.ones(3)), best)
    assert io._writing is not None
    io._writing.result()  # the write has failed by now (its error waits for the next call)
    with pytest.raises(OSError, match="No space left"):
        read_back(_trainer(io), best)
