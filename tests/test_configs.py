"""Every YAML in configs/ parses against the code."""

from __future__ import annotations

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
