"""``SamplerDistribution``: what the training sampler actually drew, per class and epoch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier.charts import draw as render
from classifier.contract import image_data
from classifier.figure_thread import PLOT_TIME_SHARE, PlottingCallback, last_epoch, log_image
from classifier.files import run_dir, unique_safe_names, write_json


def gather_drawn(drawn: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's drawn indices (all ranks draw the same number)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return drawn
    parts = [torch.empty_like(drawn) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, drawn)
    return torch.cat(parts)


def logged_shares(names: list[str], shares: dict[str, float]) -> dict[str, float]:
    """``{sampler/<column>: share}`` of each class, one column per class
    (:func:`~classifier.files.unique_safe_names`)."""
    columns = unique_safe_names(names)
    return {f"sampler/{c}": shares[n] for n, c in zip(names, columns, strict=True)}


class SamplerDistribution(PlottingCallback):
    """Compare the class distribution of ``train/`` with what the sampler drew each epoch.

    With ``sampler: weighted`` the drawn distribution should be much flatter than the folder's;
    with plain shuffling it equals it. Prints a table (first and last epoch), logs
    ``sampler/<class>`` (drawn share; a class name made safe, with ``_2`` when two names
    would share a column) to the logger, and writes ``sampler_distribution.json``
    (every epoch) and ``sampler_distribution.png`` (latest epoch, redrawn while that stays within
    ``plot_time_share`` of the run's time, and at the end of fit) into the run folder. Under DDP
    the draws of all processes are gathered first.

    Args:
        plot_time_share: the largest fraction of training wall time spent redrawing the chart
            (0: only at the end of fit; 1: every epoch).
    """

    def __init__(self, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        super().__init__(plot_time_share)
        self.epochs: list[dict[str, Any]] = []

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the epoch's draw (every rank) and report it (rank 0)."""
        data = image_data(trainer)
        device = (
            pl_module.device
            if trainer.world_size > 1 and pl_module.device.type == "cuda"
            else "cpu"
        )
        drawn = gather_drawn(data.drawn().to(device)).cpu()
        if not trainer.is_global_zero:
            return
        names = data.class_names
        train = data.files("train")
        assert train is not None, "fit has a train/ split"
        labels = torch.tensor(train[1])
        baseline = torch.bincount(labels, minlength=len(names)).double()
        effective = torch.bincount(labels[drawn], minlength=len(names)).double()
        record = {
            "epoch": trainer.current_epoch,
            "draws": int(effective.sum()),
            "baseline": dict(zip(names, (baseline / baseline.sum()).tolist(), strict=True)),
            "effective": dict(zip(names, (effective / effective.sum()).tolist(), strict=True)),
            "effective_counts": dict(zip(names, effective.long().tolist(), strict=True)),
        }
        self.epochs = [e for e in self.epochs if e["epoch"] != record["epoch"]] + [record]
        self._report(trainer, names, record)

    def _report(self, trainer: pl.Trainer, names: list[str], record: dict[str, Any]) -> None:
        folder = run_dir(trainer)
        write_json(folder / "sampler_distribution.json", self.epochs)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                logged_shares(names, record["effective"]),
                step=trainer.global_step,
            )
        series: dict[str, list[float]] = {
            "train/ folder": [record["baseline"][n] for n in names],
            "drawn": [record["effective"][n] for n in names],
        }
        title = f"Sampler: class shares drawn in epoch {record['epoch'] + 1}"
        step = trainer.global_step

        def draw() -> None:
            path = folder / "sampler_distribution.png"
            render("bar_chart", path, names, series, title, "share of images")
            log_image(trainer, "data/sampler_distribution", path, step)

        self.draws.request(trainer, "sampler", draw)
        if len(self.epochs) > 1 and not last_epoch(trainer, record["epoch"]):
            return  # the table is printed for the first and the last epoch; files every epoch
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Sampler, epoch {record['epoch'] + 1}")
        for column in ("class", "folder share", "drawn share", "drawn"):
            table.add_column(column, justify="right" if column != "class" else "left")
        for name in names:
            table.add_row(
                name,
                f"{record['baseline'][name]:.3f}",
                f"{record['effective'][name]:.3f}",
                str(record["effective_counts"][name]),
            )
        Console().print(table)

    @override
    def state_dict(self) -> dict[str, Any]:
        """Per-epoch records, kept across resume."""
        return {"epochs": self.epochs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.epochs = list(state_dict.get("epochs", []))
