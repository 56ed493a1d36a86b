"""Backbones: any timm model, local weights files instead of the hub."""

from __future__ import annotations

from pathlib import Path

import torch


def test_local_safetensors_weights_load_without_internet(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from classifier.backbone import create_backbone

    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet10t.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_backbone("resnet10t", num_classes=3, pretrained=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.state_dict()["fc.weight"].shape == (3, 512)  # a new head for 3 classes
