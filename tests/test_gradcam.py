"""Grad-CAM for CNNs and ViT-style timm models: maps the image's size, not constant, drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from PIL import Image

from classifier.grad_cam import grad_cam
from tests.conftest import run_cli, tiny


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_maps_have_the_image_size_and_show_structure(name: str) -> None:
    torch.manual_seed(0)
    net = (
        timm.create_model(name, pretrained=False, num_classes=3, img_size=64)
        if "vit" in name
        else (timm.create_model(name, pretrained=False, num_classes=3))
    )
    net.eval()
    images = torch.randn(2, 3, 64, 64)
    images[:, :, :32] += 2.0  # a bright upper half: something to look at
    with torch.no_grad():
        predicted = net(images).argmax(1)  # a class with positive evidence in each image
    maps = grad_cam(net, images, predicted)
    assert maps.shape == (2, 64, 64)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert all(float(m.std()) > 1e-3 for m in maps)  # not constant
    assert all(float(m.max()) == pytest.approx(1.0) for m in maps)
    assert not any(p.grad is not None for p in net.parameters())  # no weights touched


@pytest.mark.slow
def test_callback_writes_the_grids_after_fit_and_test(image_folder: Path) -> None:
    cli: Any = run_cli(
        *tiny("fit", image_folder, "--trainer.callbacks+=classifier.GradCam"),
        "--trainer.callbacks.init_args.num_images",
        "4",
        "--test_after_fit",
        "true",
    )
    run = Path(cli.trainer.log_dir)
    for stage in ("val", "test"):
        with Image.open(run / f"gradcam_{stage}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 400
