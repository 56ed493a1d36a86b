"""The EMA update per optimizer step, three ways side by side on one model:

- ``old``: ``classifier.EMA`` at commit a4db025 (read from git): its own update path with
  ``torch._foreach_lerp_`` / ``torch._foreach_copy_``;
- ``public``: the shipped ``EMA``'s averaging function driven by Lightning's public update path
  (``WeightAveraging.on_train_batch_end`` -> ``AveragedModel.update_parameters``), as
  ``EMAWeightAveraging`` runs;
- ``new``: the shipped ``classifier.EMA``.

``python -m benchmarks.ema_step [--model resnet50] [--steps 30] [--device cpu]`` prints one
JSON object; ``make bench`` runs it as its ``ema`` step. Each side runs the callback's
``on_train_batch_end`` as the trainer would after an optimizer step (the average on the model's
device), in interleaved rounds; medians of the per-update time (on a GPU each round ends with a
synchronize). ``host_reads`` counts tensor reads to the host in one update (``bool(tensor)``,
``.item()``...): each one is a host-device sync on a GPU, where the training loop keeps none
between log intervals (``tests/test_hot_path.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging

from benchmarks.timing import REPEATS, median_time

REPO = Path(__file__).resolve().parent.parent
OLD_REF = "a4db025"
#: Tensor methods that copy a value to the host (as ``tests/probes.py`` counts them).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class Net(pl.LightningModule):
    def __init__(self, name: str) -> None:
        import timm

        super().__init__()
        self.net = timm.create_model(name, pretrained=False, num_classes=10)


def old_ema_class(ref: str = OLD_REF) -> type[Any] | None:
    """``classifier.EMA`` as it was at ``ref`` (a module built from ``git show``); ``None``
    where that commit is not at hand (a shallow clone, an unpacked archive)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{ref}:classifier/ema.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"ema_step: commit {ref} is not in this checkout; the old side is left out")
        return None
    module = types.ModuleType(f"ema_{ref}")
    sys.modules[module.__name__] = module  # dataclass-free, but annotations resolve by module
    exec(compile(source, f"{ref}:classifier/ema.py", "exec"), module.__dict__)
    return module.EMA  # type: ignore[no-any-return]


def public_route_class() -> type[Any]:
    """The shipped ``EMA`` with Lightning's public update path instead of its own."""
    from classifier.ema import EMA

    class PublicRoute(EMA):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self._step = trainer.global_step  # the warm-up's n, as EMA does
            WeightAveraging.on_train_batch_end(self, trainer, pl_module, *args)

    return PublicRoute


class Side:
    """One implementation's callback on its own copy of the model, stepped as the trainer
    would: global_step advances, then ``on_train_batch_end``."""

    def __init__(self, ema: Any, model: pl.LightningModule) -> None:
        self.ema, self.model = ema, model
        self.trainer: Any = types.SimpleNamespace(global_step=0)
        ema.setup(self.trainer, model, "fit")
        self.update()  # the first update copies the weights: not timed

    def update(self) -> None:
        self.trainer.global_step += 1
        self.ema.on_train_batch_end(self.trainer, self.model, None, None, 0)

    def run(self, steps: int) -> float:
        """Seconds per update over ``steps`` updates."""
        start = time.perf_counter()
        for _ in range(steps):
            self.update()
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return (time.perf_counter() - start) / steps

    def host_reads(self) -> int:
        """Tensor reads to the host during one update."""
        count = 0
        saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

        def counting(method: Any) -> Any:
            def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                nonlocal count
                count += 1
                return method(tensor, *args, **kwargs)

            return read

        try:
            for name, method in saved.items():
                setattr(torch.Tensor, name, counting(method))
            self.update()
        finally:
            for name, method in saved.items():
                setattr(torch.Tensor, name, method)
        return count


def bench_ema_step(
    model: str = "resnet50", steps: int = 30, ref: str = OLD_REF, device: str = "cpu"
) -> dict[str, Any]:
    """Per-update seconds of each side, the ratios to the old one, host reads per update, and
    the new update as a fraction of a training step (batch 8, 224 px, on the CPU)."""
    import copy

    from classifier.ema import EMA

    net = Net(model)
    old = old_ema_class(ref)
    kinds = {"public": public_route_class(), "new": EMA} | ({"old": old} if old else {})
    sides = {
        name: Side(kind(decay=0.999), copy.deepcopy(net).to(device)) for name, kind in kinds.items()
    }
    for side in sides.values():
        side.run(3)  # warm the allocator and the dispatch caches
    times: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(max(REPEATS, 5)):  # rotate which side goes first
        for name in order[i % len(order) :] + order[: i % len(order)]:
            times[name].append(sides[name].run(steps))
    result: dict[str, Any] = {
        "model": model,
        "device": device,
        "tensors": sum(1 for _ in (*net.parameters(), *net.buffers())),
    }
    for name, side in sides.items():
        result[f"{name}_update_s"] = statistics.median(times[name])
        result[f"{name}_host_reads"] = side.host_reads()
    if "old" in sides:
        result["new_vs_old"] = result["new_update_s"] / result["old_update_s"]
        result["public_vs_old"] = result["public_update_s"] / result["old_update_s"]
    if device == "cpu":
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        images, labels = torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,))

        def train_step() -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net.net(images), labels).backward()
            optimizer.step()

        train_step()
        result["train_step_s"] = median_time(train_step)
        result["fraction_of_step"] = result["new_update_s"] / result["train_step_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--ref", default=OLD_REF)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(bench_ema_step(args.model, args.steps, args.ref, args.device), indent=2))


if __name__ == "__main__":
    main()
