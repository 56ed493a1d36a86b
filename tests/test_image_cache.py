"""``data.cache_images: ram``: decoded images shared by the loader workers, the same batches as
without the cache, a memory bound that refuses before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.splits import DataError
from tests.conftest import draw, make_folder


def module(data: Path, **kwargs: Any) -> Any:
    from classifier.datamodule import ImageFolderDataModule

    options: dict[str, Any] = {"image_size": 32, "batch_size": 4, "num_workers": 0, "seed": 3}
    options.update(kwargs)
    dm = ImageFolderDataModule(str(data), duplicate_bits=-1, **options)
    dm.setup("fit")
    return dm


def batches(loader: Any) -> list[torch.Tensor]:
    return [b[0].clone() for b in loader]


def big_folder(root: Path) -> Path:
    """Train and val images of 120x90 px: larger than the cache keeps them (64 px)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for k, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                draw(k, rng, size=120).resize((120, 90)).save(folder / f"{i}.png")
    return root


def test_workers_fill_one_shared_cache_and_batches_match_decoding(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 8, "val": 4})
    plain = module(data)
    cached = module(data, cache_images="ram", num_workers=2)
    cache = cached.caches["train"]
    assert not cache.filled.any()
    for _ in range(2):  # the first pass decodes and fills the cache, the second reads it
        first, second = batches(plain.train_dataloader()), batches(cached.train_dataloader())
        assert len(first) == len(second) == 6
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    # Filled by the loader workers, seen here: the memory is shared, not copied per worker.
    assert bool(cache.filled.all())
    assert cache.nbytes == len(cached.splits["train"]) * 3 * 40 * 40
    val = [batches(dm.val_dataloader()) for dm in (plain, cached)]
    assert all(torch.equal(a, b) for a, b in zip(*val, strict=True))


def test_reduced_images_give_the_same_sample_before_and_after_caching(tmp_path: Path) -> None:
    data = big_folder(tmp_path / "data")
    dm = module(data, cache_images="ram")
    train, cache = dm.datasets["train"], dm.caches["train"]
    assert tuple(cache.shapes[0].tolist()) == (64, 85)  # shorter side 2 x image_size
    key = (0, 3, 0, 0)
    before = train[key][0]
    assert bool(cache.filled[0])
    assert torch.equal(train[key][0], before)  # an exact resume sees the same crop
    # Evaluation is exact: val is kept at the evaluation resize, which then changes nothing.
    plain = module(data)
    for i in range(len(dm.datasets["val"])):
        dm.datasets["val"][i]
        assert torch.equal(dm.datasets["val"][i][0], plain.datasets["val"][i][0])
    assert bool(dm.caches["val"].filled.all())


def test_a_cache_over_the_limit_is_refused_in_one_line(tmp_path: Path) -> None:
    data = big_folder(tmp_path / "data")
    # 12 train images at 64x85 and 6 val images at 36x48 (the evaluation resize), RGB.
    need = 12 * 3 * 64 * 85 + 6 * 3 * 36 * 48
    with pytest.raises(DataError, match=rf"needs {need / 1e9:.3g} GB for 18 images, over"):
        module(data, cache_images="ram", cache_images_gb=need / 2e9)
    assert module(data, cache_images="ram", cache_images_gb=need / 1e9).caches


def test_an_image_whose_size_changed_is_simply_not_kept(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 2, "val": 1}, classes=("a", "b"))
    dm = module(data, cache_images="ram")
    path = dm.splits["train"].paths[0]
    Image.new("RGB", (30, 20)).save(path)  # after the sizes were read
    image, _, _ = dm.datasets["train"][(0, 0, 0, 0)]
    assert image.shape == (3, 32, 32) and not bool(dm.caches["train"].filled[0])
    with pytest.raises(DataError, match="decode: cpu"):
        module(data, cache_images="ram", decode="dali")


def test_an_image_still_to_be_hashed_is_hashed_from_the_file_not_the_kept_copy(
    tmp_path: Path,
) -> None:
    from classifier.health import HashSlots
    from classifier.image_dataset import ImageDataset, load_rgb
    from classifier.perceptual_hash import phash_of
    from classifier.scan_cache import UNHASHED

    data = big_folder(tmp_path / "data")
    dm = module(data, cache_images="ram")
    split, cache = dm.splits["train"], dm.caches["train"]
    ImageDataset(split.paths, split.labels, cache=cache)[0]  # kept, reduced, not hashed
    assert bool(cache.filled[0])
    hashes = HashSlots(np.full(len(split), UNHASHED, dtype=np.int64))
    ImageDataset(split.paths, split.labels, hashes=hashes, cache=cache)[0]
    assert int(hashes.values[0]) == phash_of(load_rgb(split.paths[0]))
