"""``DatasetStatistics``: what is in each split, before training starts."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from classifier.files import run_dir, write_json
from classifier.plots import bar_chart, log_image, save_figure, submit_figure

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


class DatasetStatistics(Callback):
    """Images per class and split, imbalance and unreadable files, when fit starts.

    Prints a table, writes ``dataset_stats.json`` and one ``class_distribution_<split>.png``
    per split into the run folder.

    Args:
        plots: also write the bar charts.
    """

    def __init__(self, plots: bool = True) -> None:
        self.plots = plots
        self.stats: dict[str, Any] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Collect statistics on rank 0."""
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if dm is None or not hasattr(dm, "split"):
            raise TypeError("DatasetStatistics needs classifier's ImageFolderDataModule.")
        names: list[str] = dm.class_names
        folder = run_dir(trainer)
        for name in SPLITS:
            split = dm.split(name)
            if split is None:
                continue
            counts = dm.class_counts(name)
            self.stats[name] = split_statistics(counts, names, len(dm.excluded.get(name, {})))
            if self.plots:
                submit_figure(
                    f"class_distribution_{name}",
                    partial(self._plot, trainer, names, counts, name, folder),
                )
        write_json(folder / "dataset_stats.json", self.stats)
        self._print(names)

    @staticmethod
    def _plot(
        trainer: pl.Trainer, names: list[str], counts: list[int], split: str, folder: Path
    ) -> None:
        """Draw one split's class counts (on the background figure thread)."""
        figure = bar_chart(names, {split: counts}, f"{split}: images per class", "images")
        path = save_figure(figure, folder / f"class_distribution_{split}.png")
        log_image(trainer, f"data/class_distribution_{split}", path, 0)

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
