"""``DatasetStatistics``: what is in each split, before training starts."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import image_data
from classifier.figures import PLOT_TIME_SHARE, PlottingCallback, draw, log_image
from classifier.file_io import run_dir, write_json

SPLITS = ("train", "val", "test")


def split_statistics(counts: list[int], class_names: list[str], excluded: int) -> dict[str, Any]:
    """Counts, total, imbalance ratio (largest / smallest present class) and missing classes."""
    present = [c for c in counts if c > 0]
    return {
        "images": sum(counts),
        "per_class": dict(zip(class_names, counts, strict=True)),
        "imbalance_ratio": round(max(present) / min(present), 3) if present else None,
        "missing_classes": [n for n, c in zip(class_names, counts, strict=True) if c == 0],
        "excluded_files": excluded,
    }


class DatasetStatistics(PlottingCallback):
    """Images per class and split, imbalance and unreadable files, when fit starts.

    Prints a table and writes ``dataset_stats.json`` at once, and one
    ``class_distribution_<split>.png`` per split into the run folder when the drawing budget
    allows (a short run draws them at the end of fit).

    Args:
        plots: also write the bar charts.
        plot_time_share: see :class:`~classifier.figures.PlottingCallback`.
    """

    def __init__(self, plots: bool = True, plot_time_share: float = PLOT_TIME_SHARE) -> None:
        super().__init__(plot_time_share)
        self.plots = plots
        self.stats: dict[str, Any] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Collect statistics on rank 0."""
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        data = image_data(trainer)
        names = data.class_names
        folder = run_dir(trainer)
        counts: dict[str, list[int]] = {}
        for name in SPLITS:
            if data.files(name) is None:
                continue
            counts[name] = data.class_counts(name)
            excluded = len(data.excluded.get(name, {}))
            self.stats[name] = split_statistics(counts[name], names, excluded)
        write_json(folder / "dataset_stats.json", self.stats)
        per_class = {split: dict(zip(names, found, strict=True)) for split, found in counts.items()}
        if per_class:
            rows = [[c, *(per_class[s].get(c, 0) for s in per_class)] for c in sorted(names)]
            header = ("class", *per_class)
            report_items.table(folder, "data", "data/classes", header, rows)
        self._print(names)
        if self.plots:
            charts = partial(self._plot, trainer, names, counts, folder)
            self.draws.request(trainer, "class_distribution", charts)

    @staticmethod
    def _plot(
        trainer: pl.Trainer, names: list[str], counts: dict[str, list[int]], folder: Path
    ) -> None:
        """Draw each split's class counts (on the background figure thread); one that fails is
        a warning and the others are still drawn."""
        for split, split_counts in counts.items():
            title = f"{split}: images per class"
            path = folder / f"class_distribution_{split}.png"
            try:
                draw("bar_chart", path, names, {split: split_counts}, title, "images")
            except Exception as error:  # a figure must never cost the run
                warnings.warn(f"figure {path.name} could not be drawn: {error}", stacklevel=2)
                continue
            shown = ("data", "training class distribution") if split == "train" else ("", "")
            log_image(trainer, f"data/class_distribution_{split}", path, 0, *shown)

    def _print(self, names: list[str]) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Dataset")
        table.add_column("class")
        for split in self.stats:
            table.add_column(split, justify="right")
        for name in names:
            table.add_row(name, *(str(s["per_class"][name]) for s in self.stats.values()))
        table.add_section()
        table.add_row("total", *(str(s["images"]) for s in self.stats.values()))
        table.add_row("imbalance", *(f"{s['imbalance_ratio']}x" for s in self.stats.values()))
        table.add_row("excluded", *(str(s["excluded_files"]) for s in self.stats.values()))
        missing = [
            f"{k}: {', '.join(s['missing_classes'])}"
            for k, s in self.stats.items()
            if s["missing_classes"]
        ]
        Console().print(table)
        if missing:
            Console().print(f"[yellow]Classes missing from a split: {'; '.join(missing)}")
