"""Collectives that are no-ops in a single process."""

from __future__ import annotations

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


def max_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of ``tensor`` over every process (itself without a process
    group). Every process must call it; the result is on the CPU."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    reduced = tensor.to(device)
    torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
    return reduced.cpu()
