"""Backbones: any timm model, local weights files instead of the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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


@pytest.mark.slow
def test_a_compile_failure_at_the_first_forward_falls_back_to_eager(
    image_folder: Path, monkeypatch: Any
) -> None:
    """``torch.compile`` is lazy: an unsupported backend fails at the first call, not when
    ``compile`` is asked for. The run must go on eagerly with a warning, as documented."""
    import pytest

    from tests.conftest import run_cli, tiny

    def broken(net: Any, **kwargs: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("backend compiler failed")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile failed.*running eagerly"):
        cli: Any = run_cli(
            *tiny("fit", image_folder, "--trainer.max_epochs", "1"), "--model.compile", "true"
        )
    assert Path(cli.trainer.checkpoint_callback.best_model_path).is_file()
    assert set(cli.model.state_dict()) == set(
        type(cli.model)("test_resnet", ["cat", "dog", "fox"], pretrained=False).state_dict()
    )  # the compiled wrapper adds no keys


def test_a_working_compile_keeps_state_dict_keys() -> None:
    from classifier.backbone import Runner

    net = torch.nn.Linear(4, 2)
    runner = Runner()
    runner.compile(net)
    x = torch.randn(3, 4)
    assert torch.allclose(runner(net, x), net(x), atol=1e-6)
