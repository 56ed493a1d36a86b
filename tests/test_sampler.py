"""Samplers: seeded per epoch, sharded per rank, weighted draws measurably flatter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from classifier.sampler import EpochSampler, ShardSampler
from tests.conftest import full, run_cli


def test_epoch_sampler_is_a_function_of_seed_and_epoch() -> None:
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert sorted(key[0] for key in a) == list(range(50))
    assert {key[1:3] for key in a} == {(3, 4)}  # (seed, epoch) travel with each index


def test_ranks_draw_disjoint_shards_of_one_draw() -> None:
    weights = torch.rand(30)
    ranks = [EpochSampler(30, weights, seed=1, rank=r, world_size=2) for r in range(2)]
    single = EpochSampler(30, weights, seed=1)
    shards = [[key[0] for key in r] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 15
    merged = [i for pair in zip(*shards, strict=True) for i in pair]
    assert merged == [key[0] for key in single]


def test_each_epoch_draws_its_own_order() -> None:
    sampler = EpochSampler(20, seed=1)
    first = [k[0] for k in sampler]
    sampler.set_epoch(3)
    assert {k[2] for k in sampler} == {3}
    assert [k[0] for k in sampler] != first


def test_mid_epoch_resume_skips_consumed_samples() -> None:
    full = [k[0] for k in EpochSampler(20, seed=1)]
    resumed = EpochSampler(20, seed=1)
    resumed.resume(0, 8)
    assert [k[0] for k in resumed] == full[8:]
    assert len(list(resumed)) == 20  # only the first iteration skips
    finished = EpochSampler(20, seed=1)
    finished.resume(4, 20)  # checkpoint at the end of epoch 4: the next draw is epoch 5
    assert {k[2] for k in finished} == {5}


def test_shard_sampler_covers_each_index_once() -> None:
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))


@pytest.mark.slow
def test_weighted_sampler_flattens_an_imbalanced_folder(folder_factory: Any) -> None:
    data = folder_factory(classes=("common", "rare", "scarce"), counts={"train": 4, "val": 3})
    source = data / "train" / "common" / "common_000.png"
    for i in range(36):  # common: 40 images, rare: 4, scarce: 4
        (data / "train" / "common" / f"extra_{i}.png").write_bytes(source.read_bytes())
    cli: Any = run_cli(
        *full(
            "fit",
            data,
            "--data.sampler",
            "weighted",
            "--trainer.max_epochs",
            "2",
        )
    )
    epochs = json.loads((Path(cli.trainer.log_dir) / "sampler_distribution.json").read_text())
    baseline, drawn = epochs[-1]["baseline"], epochs[-1]["effective"]
    assert baseline["common"] / baseline["rare"] == pytest.approx(10)
    assert max(drawn.values()) / min(drawn.values()) < 3
    assert drawn["common"] < 0.6 < baseline["common"]


def test_each_class_gets_its_own_sampler_column() -> None:
    from classifier.sampler import logged_shares

    names = ["a/b", "a_b", "a_b_2", "cat", "cat "]
    shares = {n: float(i) for i, n in enumerate(names)}
    assert logged_shares(names, shares) == {
        "sampler/a_b": 0.0,
        "sampler/a_b_2": 1.0,
        "sampler/a_b_2_2": 2.0,
        "sampler/cat": 3.0,
        "sampler/cat_2": 4.0,
    }
