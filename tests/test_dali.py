"""``data.decode: dali``: DALI's pipelines (CPU operators here) against the CPU path.

Tests marked ``dali`` need NVIDIA DALI (``make test-dali`` installs it into its own venv and
sets ``CLASSIFIER_TEST_DALI=required``, so there they fail rather than skip); ``make test`` skips
them. ``test_data.py`` checks the error a user without DALI gets.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.datamodule import ImageFolderDataModule
from classifier.image_dataset import UNREADABLE, ImageDataset, load_rgb
from classifier.sampler import EpochSampler, ShardSampler
from classifier.splits import Paths
from classifier.transforms import Preprocessing, eval_transform, train_transform
from tests.conftest import CONF, classifier_process, demo_digits, make_folder, run_cli

HAVE_DALI = importlib.util.find_spec("nvidia") is not None and (
    importlib.util.find_spec("nvidia.dali") is not None
)
pytestmark = [
    pytest.mark.dali,
    pytest.mark.skipif(
        not HAVE_DALI and os.environ.get("CLASSIFIER_TEST_DALI") != "required",
        reason="NVIDIA DALI is not installed (make test-dali installs it)",
    ),
]
PRE = Preprocessing.from_crop_pct(64, 0.875, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _dali_images(
    paths: list[Path], augment: object | None, count: int, pre: Preprocessing = PRE
) -> torch.Tensor:
    """``count`` DALI outputs over ``paths`` (repeated), in order."""
    from classifier.dali import DaliLoader

    files = [paths[i % len(paths)] for i in range(count)]
    dataset = ImageDataset(Paths.of(files), np.zeros(count, np.int64))
    sampler = EpochSampler(count, seed=3) if augment is not None else ShardSampler(count)
    loader = DaliLoader(dataset, sampler, 50, pre, augment, None, 2)  # type: ignore[arg-type]
    batches = list(loader)
    assert len(batches) == len(loader)
    return torch.cat([b[0] for b in batches])


def _extent(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The crop's width and height as fractions of a gradient image (R = x, G = y)."""
    red, green = images[:, 0].float(), images[:, 1].float()
    width = (red.amax((1, 2)) - red.amin((1, 2))) / 255
    height = (green.amax((1, 2)) - green.amin((1, 2))) / 255
    return width.numpy(), height.numpy()


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.35, 1.0)])
def test_random_resized_crops_match_the_cpu_path_in_area_and_aspect(
    tmp_path: Path, scale: tuple[float, float]
) -> None:
    from classifier.dali import Augment

    ramp = np.linspace(0, 255, 256).astype(np.uint8)
    pixels = np.stack([np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256))], -1)
    path = tmp_path / "gradient.png"
    Image.fromarray(np.dstack([pixels, np.zeros((256, 256), np.uint8)])).save(path)
    dali_w, dali_h = _extent(_dali_images([path], Augment(scale, hflip=0), 400))
    torch.manual_seed(0)
    cpu = train_transform(PRE, scale=scale, hflip=0)
    image = load_rgb(path)
    cpu_w, cpu_h = _extent(torch.stack([cpu(image) for _ in range(400)]))
    for w, h in ((dali_w, dali_h), (cpu_w, cpu_h)):
        assert (w * h).min() >= scale[0] - 0.02 and (w * h).max() <= 1.0
        assert np.abs(np.log(w / h)).max() <= np.log(4 / 3) + 0.05
    assert abs((dali_w * dali_h).mean() - (cpu_w * cpu_h).mean()) < 0.05
    assert abs(np.log(dali_w / dali_h).std() - np.log(cpu_w / cpu_h).std()) < 0.04


@pytest.mark.parametrize("probability", [0.0, 0.5, 0.8])
def test_horizontal_flips_happen_at_the_configured_rate(tmp_path: Path, probability: float) -> None:
    from classifier.dali import Augment

    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :32] = 255
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    images = _dali_images([path], Augment((1.0, 1.0), hflip=probability), 400).float()
    flipped = images[..., 32:].mean((1, 2, 3)) > images[..., :32].mean((1, 2, 3))
    assert abs(float(flipped.float().mean()) - probability) < 0.07


def _photo(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_evaluation_resizes_and_crops_like_the_cpu_path(tmp_path: Path, interpolation: str) -> None:
    sizes = [(500, 375), (375, 500), (97, 61), (40, 40), (64, 300)]
    paths = []
    for seed, (width, height) in enumerate(sizes):
        paths.append(tmp_path / f"{seed}.jpg")
        _photo(seed, width, height).save(paths[-1], quality=92)
    pre = Preprocessing.from_crop_pct(64, 0.875, interpolation, PRE.mean, PRE.std)
    dali = _dali_images(paths, None, len(paths), pre).float()
    cpu = torch.stack([eval_transform(pre)(load_rgb(p)) for p in paths]).float()
    assert dali.shape == cpu.shape == (len(paths), 3, 64, 64)
    difference = (dali - cpu).abs().mean((1, 2, 3))
    assert float(difference.max()) < 3.0, difference  # grey levels of 255


def _module(data: Path, **kwargs: object) -> ImageFolderDataModule:
    module = ImageFolderDataModule(
        str(data), image_size=32, batch_size=8, num_workers=2, decode="dali", **kwargs
    )  # type: ignore[arg-type]
    module.setup("fit")
    return module


def _run(loader: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(loader)  # type: ignore[call-overload]
    images, labels, indices = (torch.cat([b[i] for b in batches]) for i in range(3))
    return images, labels, indices


def test_the_training_loader_draws_the_samplers_order_with_its_labels(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 15, "val": 5}, classes=("a", "b"))
    for extra in range(10):  # an imbalanced class for the weighted draw
        Image.new("RGB", (40, 40), (extra, 200, 9)).save(data / "train" / "b" / f"x{extra}.png")
    (data / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    module = _module(data, sampler="weighted")
    assert "broken.png" in " ".join(module.excluded["train"])
    loader = module.train_dataloader()
    for epoch in range(2):
        loader.resume.epoch = lambda epoch=epoch: epoch  # type: ignore[attr-defined] # the trainer's
        images, labels, indices = _run(loader)
        sampler = module.train_sampler
        assert sampler is not None and sampler.epoch == epoch
        assert indices.tolist() == sampler.trained.tolist()
        assert images.shape == (len(indices), 3, 32, 32) and images.dtype == torch.uint8
        train = module.splits["train"]
        assert labels.tolist() == train.labels[indices.numpy()].tolist()
        names = [module.class_names[label] for label in labels.tolist()]
        assert names == [train.paths[int(i)].parent.name for i in indices]
        assert "broken.png" not in {train.paths[int(i)].name for i in indices}
        assert 0.4 < float(labels.float().mean()) < 0.6  # weighted: the classes drawn evenly
    _, val_labels, val_indices = _run(module.val_dataloader())
    assert sorted(val_indices.tolist()) == list(range(len(module.splits["val"])))
    assert val_labels.tolist() == module.splits["val"].labels[val_indices.numpy()].tolist()


def test_a_resumed_epoch_continues_with_the_samples_not_yet_trained_on(tmp_path: Path) -> None:
    module = _module(make_folder(tmp_path / "data", counts={"train": 12, "val": 4}))
    loader = module.train_dataloader()
    _, _, whole = _run(loader)
    loader.load_state_dict({"epoch": 0, "samples": 16})  # type: ignore[attr-defined]
    _, _, rest = _run(loader)
    assert rest.tolist() == whole[16:].tolist()


def _gif_bytes(colour: tuple[int, int, int]) -> bytes:
    import io

    out = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(out, format="GIF")
    return out.getvalue()


def test_a_file_dali_cannot_decode_is_named_and_replaced_or_marked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Files that became a GIF or garbage after the scan (which refuses GIFs up front)."""
    data = make_folder(tmp_path / "data", counts={"train": 12, "val": 4})
    module = _module(data)
    train, val = module.splits["train"], module.splits["val"]
    gif = next(i for i, p in enumerate(train.paths) if p.name == "cat_002.png")
    changed = next(i for i, p in enumerate(train.paths) if p.name == "dog_003.png")
    val_gif = next(i for i, p in enumerate(val.paths) if p.name == "cat_001.png")
    train.paths[gif].write_bytes(_gif_bytes((200, 40, 40)))
    train.paths[changed].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    val.paths[val_gif].write_bytes(_gif_bytes((20, 40, 240)))
    with caplog.at_level(logging.WARNING):
        _, _, indices = _run(module.train_dataloader())
        _, val_labels, val_indices = _run(module.val_dataloader())
    assert gif not in indices.tolist() and changed not in indices.tolist()
    assert len(indices) == module.train_batches_per_epoch() * 8
    assert "cat_002.png: a format DALI does not decode" in caplog.text
    assert "dog_003.png" in caplog.text and "dog_003.png: a format DALI" not in caplog.text
    assert module.new_failures("train") >= 2
    assert val_labels[val_indices.tolist().index(val_gif)] == UNREADABLE
    assert (val_labels == UNREADABLE).sum() == 1


def test_gif_or_tiff_files_or_no_scan_are_refused_in_one_line(tmp_path: Path) -> None:
    """DALI decodes grey+alpha TIFFs to other pixels and fails on GIFs: the scan finds them
    by their content, whatever their name, and the run stops before training."""
    from classifier.splits import DataError

    data = make_folder(tmp_path / "data", counts={"train": 6, "val": 3})
    grey_alpha = Image.new("LA", (40, 40), (90, 200))
    grey_alpha.save(data / "val" / "dog" / "scan.jpg", format="TIFF")  # a TIFF named .jpg
    with pytest.raises(DataError, match=r"1 image\(s\) of .*val are TIFF.*scan\.jpg"):
        _module(data)
    (data / "val" / "dog" / "scan.jpg").unlink()
    (data / "train" / "fox" / "anim.gif").write_bytes(_gif_bytes((1, 2, 3)))
    with pytest.raises(DataError, match=r"train are GIF.*anim\.gif.*--data\.decode cpu"):
        _module(data)
    with pytest.raises(DataError, match=r"needs data\.scan: true"):
        _module(data, scan=False)
    cpu = ImageFolderDataModule(str(data), image_size=32)  # the CPU path reads GIFs
    cpu.setup("fit")
    assert any(p.name == "anim.gif" for p in cpu.splits["train"].paths)


def test_a_file_truncated_while_dali_reads_ahead_never_kills_the_process(tmp_path: Path) -> None:
    """DALI maps files into memory by default: one truncated after it was mapped and before it
    was decoded killed the process with SIGBUS. Here it is named and replaced."""
    import subprocess
    import sys

    script = tmp_path / "truncate.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.conftest import make_folder\n"
        "from tests.test_dali import _module\n"
        "data = make_folder(Path(sys.argv[1]), counts={'train': 16, 'val': 2})\n"
        "module = _module(data)\n"
        "paths = list(module.splits['train'].paths)\n"
        "for n, batch in enumerate(module.train_dataloader()):\n"
        "    if n == 0:\n"
        "        for path in paths:\n"
        "            if path.stat().st_size > 1 and int(path.stem[-3:]) % 4 == 1:\n"
        "                path.write_bytes(b'x')\n"
        "print('done', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CONF.parent.parent), *sys.path])}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "done" in result.stdout and "replacing unreadable image" in result.stderr


def test_dali_errors_are_shown_by_their_cause() -> None:
    from classifier.dali import dali_cause

    error = RuntimeError(
        "Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image`,\n"
        "which was used in the pipeline definition with the following traceback:\n\n"
        '  File "x.py", line 3, in build\n\nencountered:\n\n'
        "Error in thread 0: dlopen libnvimgcodec.so failed\nStacktrace (9 entries):\n"
        "Current pipeline object is no longer valid."
    )
    assert dali_cause(error) == "Error in thread 0: dlopen libnvimgcodec.so failed"
    assert dali_cause(RuntimeError("plain")) == "plain"


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ddp_processes_each_decode_their_own_shard(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", counts={"train": 16, "val": 6})
    args = ["fit", "--config", str(CONF / "tiny.yaml"), "--data.data_dir", str(data)]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    args += ["--data.decode", "dali", "--trainer.callbacks+=classifier.LabelIssues"]
    result = classifier_process(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    (run,) = sorted((tmp_path / "runs").glob("*/version_*"))
    issues = json.loads((run / "label_issues.json").read_text())
    # Every training image scored once across the two shards; val counted once too.
    assert issues["train"]["scored_images"] == issues["train"]["images"] == 48
    assert issues["val"]["images"] == 18


@pytest.mark.slow
def test_two_epochs_on_the_demo_digits_score_within_one_percent_of_the_cpu_path() -> None:
    scores = {}
    for decode in ("cpu", "dali"):
        cli = run_cli(
            "fit",
            "--config",
            str(Path(__file__).parents[1] / "configs" / "quickstart.yaml"),
            "--data.data_dir",
            str(demo_digits()),
            "--data.decode",
            decode,
            "--trainer.max_epochs",
            "2",
            "--trainer.logger.init_args.name",
            decode,
            "--test_after_fit",
            "false",
        )
        scores[decode] = float(cli.trainer.callback_metrics["val/top1"])  # type: ignore[attr-defined]
    assert scores["cpu"] > 0.9, scores
    assert abs(scores["dali"] - scores["cpu"]) <= 0.01, scores
