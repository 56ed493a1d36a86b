"""Exact resume: a run SIGKILLed mid-epoch and resumed with --ckpt_path last equals an
uninterrupted run, bit for bit (weights, EMA weights, logged losses, history)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import FULL, classifier_process, run_cli

ARGS = [
    *FULL,
    "--trainer.max_epochs",
    "4",
    "--trainer.deterministic",
    "true",
    "--data.num_workers",
    "2",  # worker prefetch is where Lightning reuses epoch 0's shuffle
    "--data.auto_augment",
    "trivialaugment",
    "--model.mixup",
    "0.2",  # MixUp and dropout draw from the restored RNG states
    "--model.drop_rate",
    "0.2",
]


def _losses(run: Path) -> dict[str, str]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return {r["step"]: r["train/loss_step"] for r in rows if r.get("train/loss_step")}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("probe", "status", "extra"),
    [
        ("KillAt", -9, []),
        ("TermAt", 143, []),
        ("TermAt", 143, ["--model.optimizer", "sam", "--model.sam_base", "adamw"]),
        # The resumed process starts with an empty cache, the whole run reads a full one.
        ("TermAt", 143, ["--data.cache_images", "ram"]),
    ],
    ids=["sigkill", "sigterm", "sigterm-sam", "sigterm-ram-cache"],
)
def test_stop_mid_epoch_then_resume_is_bitwise_equal(
    image_folder: Path, tmp_path: Path, probe: str, status: int, extra: list[str]
) -> None:
    """SIGKILL resumes from the last epoch end; SIGTERM saves and resumes mid-epoch (also
    with SAM: its base optimizer's state is the checkpoint's)."""
    data = ["--data.data_dir", str(image_folder), *extra]
    whole: Any = run_cli("fit", *ARGS, *data)

    killed = classifier_process(
        "fit",
        *ARGS,
        *data,
        f"--trainer.callbacks+=tests.probes.{probe}",
        "--trainer.callbacks.init_args.epoch=2",
        "--trainer.callbacks.init_args.batch=2",
        cwd=tmp_path,
        timeout=300,
    )
    assert killed.returncode == status, killed.stderr[-2000:]
    resumed: Any = run_cli("fit", *ARGS, *data, "--ckpt_path", "last")

    first, second = Path(whole.trainer.log_dir), Path(resumed.trainer.log_dir)
    a = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 16  # 36 images: 4 full batches of 8 an epoch
    for key in ("state_dict", "current_model_state"):  # EMA weights, then raw weights
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs"
    whole_losses, resumed_losses = _losses(first), _losses(second)
    assert resumed_losses and all(whole_losses[s] == v for s, v in resumed_losses.items())
    assert (first / "history.csv").read_text() == (second / "history.csv").read_text()


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    from classifier import resume

    torch.manual_seed(1)
    states = resume.capture()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.save({"rng_states": states}, tmp_path / "states.pt")
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    resume.restore(torch.load(tmp_path / "states.pt", weights_only=True)["rng_states"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
