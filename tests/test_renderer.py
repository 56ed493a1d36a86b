"""The figure renderer process: draws matplotlib figures on another core, never loses one."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from classifier import renderer
from classifier.renderer import Renderer, RenderError

HEATMAP = (np.array([[3, 1], [0, 4]]), ["cat", "dog"], "val confusion matrix", False)


@pytest.fixture
def live() -> Any:
    process = Renderer()
    yield process
    process.close()
    process.process.wait(timeout=30)


def test_draws_a_figure_in_its_own_process(live: Renderer, tmp_path: Path) -> None:
    path = live.draw("heatmap", tmp_path / "confusion.png", HEATMAP)
    assert Image.open(path).size[0] > 300
    assert live.process.pid != os.getpid()


def test_the_renderer_and_its_figures_import_neither_torch_nor_lightning() -> None:
    code = (
        "import sys, classifier.renderer, classifier.figures, seaborn;"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_figure_that_fails_is_an_error_and_the_next_one_is_drawn(
    live: Renderer, tmp_path: Path
) -> None:
    with pytest.raises(RenderError, match=r"Error: "):
        live.draw("heatmap", tmp_path / "bad.png", (np.zeros(3), ["a"], "t", False))
    assert not (tmp_path / "bad.png").exists()
    assert live.draw("heatmap", tmp_path / "good.png", HEATMAP).is_file()


def test_ctrl_c_and_sigterm_leave_it_drawing(live: Renderer, tmp_path: Path) -> None:
    """The command decides when to stop and draws what waits first: a signal sent to the
    whole process group (Ctrl-C, a scheduler's SIGTERM) must not end the renderer."""
    live.draw("heatmap", tmp_path / "warm.png", HEATMAP)  # signal handlers are set by now
    os.kill(live.process.pid, signal.SIGINT)
    os.kill(live.process.pid, signal.SIGTERM)
    time.sleep(0.2)
    assert live.process.poll() is None
    assert live.draw("heatmap", tmp_path / "after.png", HEATMAP).is_file()


def test_it_ends_when_the_command_closes_its_input(live: Renderer) -> None:
    live.close()
    assert live.process.wait(timeout=30) == 0


def test_a_stuck_renderer_is_stopped_and_the_figure_drawn_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = Renderer()
    try:
        monkeypatch.setattr(renderer, "_RENDERER", process)
        process.draw("heatmap", tmp_path / "warm.png", HEATMAP)  # started and warm
        monkeypatch.setattr(renderer, "TIMEOUT_S", 1.0)
        os.kill(process.process.pid, signal.SIGSTOP)  # hangs: never answers
        with pytest.warns(UserWarning, match="renderer stopped"):
            path = renderer.draw("heatmap", tmp_path / "here.png", *HEATMAP)
        assert Image.open(path).size[0] > 300
        assert process.process.poll() is not None  # killed and reaped, not left behind
    finally:
        process.stop_now()


def test_a_payload_that_cannot_be_pickled_leaves_the_renderer_usable(
    live: Renderer, tmp_path: Path
) -> None:
    big = [bytes(1000)] * 300  # larger than a pipe's buffer, then something unpicklable
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        live.draw("heatmap", tmp_path / "x.png", (big, lambda: None))
    assert live.draw("heatmap", tmp_path / "after.png", HEATMAP).is_file()


def test_a_dead_renderer_falls_back_to_drawing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = Renderer()
    monkeypatch.setattr(renderer, "_RENDERER", process)
    process.process.kill()
    process.process.wait(timeout=30)
    with pytest.warns(UserWarning, match="renderer stopped"):
        path = renderer.draw("heatmap", tmp_path / "here.png", *HEATMAP)
    assert Image.open(path).size[0] > 300
    assert renderer._RENDERER is None  # later figures go straight to this process


@pytest.mark.parametrize(
    ("argv", "env", "started"),
    [
        (["fit", "--config", "x.yaml"], {}, True),
        (["test", "--ckpt_path", "best.ckpt"], {}, True),
        (["predict", "--ckpt_path", "best.ckpt"], {}, False),  # draws nothing
        (["fit", "--help"], {}, False),
        (["fit", "--print_config"], {}, False),
        (["fit"], {"LOCAL_RANK": "1"}, False),  # a DDP rank other than 0
        (["fit"], {"RANK": "3"}, False),
        (["fit"], {"SLURM_PROCID": "2"}, False),
        (["fit"], {"LOCAL_RANK": "0", "RANK": "0"}, True),  # torchrun's first process
        (["fit"], {"CLASSIFIER_RENDERER": "0"}, False),
        (["fit"], {"RANK": ""}, True),  # set but empty: not another rank
        (["-c", "run.yaml", "test"], {}, True),  # the subcommand after a config
        (["fit", "--print_c"], {}, False),  # jsonargparse takes abbreviations
        (["fit", "--trainer.help", "Trainer"], {}, False),
    ],
)
def test_started_only_where_figures_are_drawn(
    argv: list[str], env: dict[str, str], started: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (*renderer.RANK_VARIABLES, "CLASSIFIER_RENDERER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    made: list[object] = []
    monkeypatch.setattr(renderer, "Renderer", lambda: made.append(1) or object())
    monkeypatch.setattr(renderer, "_RENDERER", None)
    renderer.start(argv)
    assert bool(made) is started
