"""``ModelInfo``: size, compute and speed of the network, at the start of fit."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module
from classifier.file_io import run_dir, write_json


def count_macs(net: torch.nn.Module, image_size: int, device: torch.device) -> float | None:
    """Multiply-accumulates of one image at ``image_size`` (fvcore; ``None`` if it fails).

    fvcore counts one fused multiply-add as one "flop", so its total is MACs.
    """
    try:
        from fvcore.nn import FlopCountAnalysis

        for name in ("fvcore", "fvcore.nn.jit_analysis"):
            logging.getLogger(name).setLevel(logging.ERROR)
        sample = torch.zeros(1, 3, image_size, image_size, device=device)
        analysis = FlopCountAnalysis(net, sample)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return float(analysis.total())
    except Exception:  # tracing fails on some exotic models; the rest of the table still helps
        return None


@torch.no_grad()
def measure_latency(
    net: torch.nn.Module,
    batch: int,
    image_size: int,
    device: torch.device,
    repeats: int,
    budget_s: float = 1.0,
) -> float:
    """Median seconds per forward pass of a ``batch`` of images: after two warm-up passes
    (kernels, caches), ``repeats`` timed ones, or fewer once ``budget_s`` is spent (a large
    model on a CPU: one warm-up and one timed pass), so start-up stays short."""
    sample = torch.randn(batch, 3, image_size, image_size, device=device)
    times: list[float] = []
    warmups, spent, index = 2, 0.0, 0
    while len(times) < max(1, repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        net(sample)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        spent += seconds
        if index >= warmups:
            times.append(seconds)
        elif spent >= budget_s:
            warmups = index + 1  # slow enough to be warm: time the next pass
        index += 1
        if times and spent >= budget_s:
            break
    return sorted(times)[len(times) // 2]


class ModelInfo(Callback):
    """Print and save parameters, weight size, GMACs and latency when fit starts.

    Writes ``model_info.json`` into the run folder and prints a table.

    Args:
        batch_sizes: batch sizes whose latency and images/s are measured on the training device.
        repeats: timed forward passes per batch size (the median is reported).
        budget_s: seconds each batch size may take; a slow model is timed with fewer passes.
    """

    def __init__(
        self, batch_sizes: tuple[int, ...] = (1, 32), repeats: int = 5, budget_s: float = 1.0
    ) -> None:
        self.batch_sizes = batch_sizes
        self.repeats = repeats
        self.budget_s = budget_s

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure on rank 0 and write the files."""
        if not trainer.is_global_zero:
            return
        model = classifier_module(pl_module)
        net, pre = model.model, model.preprocessing
        assert pre is not None, "preprocessing is set by the data module's setup"
        size = pre.image_size
        params = list(net.parameters())
        tensors = params + list(net.buffers())
        info: dict[str, Any] = {
            "model_name": pl_module.hparams.get("model_name"),
            "num_classes": pl_module.num_classes,
            "parameters": sum(p.numel() for p in params),
            "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
            "weights_mb": round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 3),
            "input_size": [3, size, size],
            "device": str(pl_module.device),
        }
        was_training = net.training
        net.eval()
        macs = count_macs(net, size, pl_module.device)
        info["gmacs"] = None if macs is None else round(macs / 1e9, 4)
        info["latency"] = {}
        for batch in self.batch_sizes:
            seconds = measure_latency(
                pl_module, batch, size, pl_module.device, self.repeats, self.budget_s
            )
            info["latency"][str(batch)] = {
                "ms": round(seconds * 1e3, 3),
                "images_per_s": round(batch / seconds, 1),
            }
        net.train(was_training)
        folder = run_dir(trainer)
        write_json(folder / "model_info.json", info)
        keys = ("model_name", "num_classes", "parameters", "weights_mb", "gmacs")
        rows = [(k, info[k]) for k in keys if k in info]
        rows += [
            (f"latency, batch {b}", f"{v['ms']} ms ({v['images_per_s']} img/s)")
            for b, v in info["latency"].items()
        ]
        report_items.table(folder, "model", "model", ("", ""), rows)
        report_items.note(folder, "summary", "summary/model", f"model {info['model_name']}")
        self._print(info)

    @staticmethod
    def _print(info: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Model: {info['model_name']}", show_header=False)
        table.add_row(
            "Parameters", f"{info['parameters']:,} ({info['trainable_parameters']:,} trainable)"
        )
        table.add_row("Weights", f"{info['weights_mb']:.1f} MB")
        gmacs = info["gmacs"]
        table.add_row(
            "GMACs / image",
            "n/a" if gmacs is None else f"{gmacs:.3f} at {info['input_size'][1]} px",
        )
        for batch, value in info["latency"].items():
            table.add_row(
                f"Latency, batch {batch}",
                f"{value['ms']:.1f} ms ({value['images_per_s']:.0f} img/s, {info['device']})",
            )
        Console().print(table)
