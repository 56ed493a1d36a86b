"""Collectives that are no-ops in a single process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group.

    Every rank must call it.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_batches(
    batches: Sequence[tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...] | None:
    """Every process's ``batches`` (tuples of tensors, one per column), each column
    concatenated on the CPU in rank order; ``None`` when no process has any.

    Every rank must call it.
    """
    local = tuple(torch.cat(column).cpu() for column in zip(*batches, strict=True)) or None
    parts = [p for p in gather_objects(local) if p is not None]
    if not parts:
        return None
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def max_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of ``tensor`` over every process (itself without a process
    group). Every process must call it; the result is on the CPU."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    reduced = tensor.to(device)
    torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
    return reduced.cpu()
