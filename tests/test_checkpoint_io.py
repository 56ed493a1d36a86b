"""SafeCheckpointIO: background writes from a snapshot, one file for one training state."""

from __future__ import annotations

from pathlib import Path

import torch

from classifier.checkpoint import SafeCheckpointIO


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
