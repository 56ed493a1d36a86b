"""Every YAML in configs/ parses against the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "resnet50.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(
    config: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            "fit", "--config", str(config), "--data.data_dir", str(image_folder), "--print_config"
        )
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["model_name"]
    assert resolved["trainer"]["use_distributed_sampler"] is False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["finetune.yaml", "vit_finetune.yaml"])
def test_the_fine_tuning_recipes_run_from_a_local_weights_file(
    name: str, image_folder: Path, tmp_path: Path
) -> None:
    """Each recipe as written, shortened (2 epochs of 2 batches at 56 px on the CPU, the
    first frozen), from a weights file saved at the model's native size as the hub gives it
    (how the file loads: tests/test_input_size.py), exported and verified."""
    from typing import Any

    import timm
    import torch
    from safetensors.torch import save_file

    config = REPO / "configs" / name
    model_name = yaml.safe_load(config.read_text())["model"]["model_name"]
    weights = tmp_path / "weights.safetensors"
    save_file(timm.create_model(model_name, pretrained=False).state_dict(), str(weights))
    short = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"]
    short += ["--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu"]
    short += ["--trainer.precision", "32-true", "--data.image_size", "56"]
    short += ["--data.batch_size", "4", "--data.num_workers", "0", "--test_after_fit", "false"]
    short += ["--model.freeze_backbone_epochs", "1", "--model.channels_last", "false"]
    cli: Any = run_cli(
        *["fit", "--config", str(config), "--data.data_dir", str(image_folder)],
        *[*short, "--model.pretrained", str(weights)],
    )
    assert cli.trainer.global_step == 4
    run = Path(cli.trainer.log_dir)
    assert json.loads((run / "export_report.json").read_text())["passed"]
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["image_size"] == 56 and hparams["model_name"] == model_name
