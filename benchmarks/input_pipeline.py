"""The input pipeline alone: the data module's training batches delivered to the device and
normalised, no model. ``python -m benchmarks.input_pipeline DIR --decode cpu|dali``; prints one
JSON line with ``images_per_s``."""

from __future__ import annotations

import argparse
import json
import time

import lightning.pytorch as pl
import torch

from classifier.datamodule import ImageFolderDataModule


def main() -> None:
    """Time ``--steps`` batches after ``--warmup`` untimed ones (the recipe's augmentation)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--decode", choices=["cpu", "dali"], default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    module = ImageFolderDataModule(
        args.data_dir,
        batch_size=args.batch,
        num_workers=args.workers,
        decode=args.decode,
        duplicate_bits=-1,
    )
    # The trainer names the device DALI decodes on; nothing is fitted.
    module.trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False)
    device = module.trainer.strategy.root_device
    module.setup("fit")
    loader = module.train_dataloader()
    done, start = 0, 0.0
    while done < args.warmup + args.steps:
        for batch in loader:
            module.on_after_batch_transfer([t.to(device, non_blocking=True) for t in batch], 0)
            done += 1
            if done == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            if done == args.warmup + args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = args.steps * args.batch / (time.perf_counter() - start)
    print(json.dumps({"images_per_s": round(rate), "decode": args.decode}))


if __name__ == "__main__":
    main()
