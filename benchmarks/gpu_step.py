"""The training step alone, on one batch already on the device (no data loading): the ceiling
the recipe is compared with. ``python -m benchmarks.gpu_step [--compile] [--steps N]``; prints
one JSON line with ``images_per_s``."""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F  # noqa: N812


def main() -> None:
    """Time ``--steps`` forward-backward-update steps after ``--warmup`` untimed ones."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = timm.create_model(args.model, pretrained=False, num_classes=1000)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if args.compile else model
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    rate = args.steps * args.batch / seconds
    print(json.dumps({"images_per_s": round(rate), "compile": args.compile, "model": args.model}))


if __name__ == "__main__":
    main()
