"""EMA: averaged weights are what is scored, saved, tested and restored on resume."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml

from classifier.ema import EMA
from tests.conftest import CONF, FULL, run_cli
from tests.probes import HOST_READS, probe


def _monitor_loss(folder: Path) -> list[str]:
    """:data:`FULL` with best.ckpt chosen by val/loss (a score raw weights would not reproduce)."""
    config = yaml.safe_load((CONF / "callbacks.yaml").read_text())
    checkpoint = config["trainer"]["callbacks"][0]["init_args"]
    checkpoint.update(monitor="val/loss", mode="min")
    path = folder / "loss_monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(CONF / "tiny.yaml"), "--config", str(path)]


def test_decay_warms_up() -> None:
    ema = EMA(decay=0.999)
    assert ema.current_decay(0) == pytest.approx(0.1)
    assert ema.current_decay(90) == pytest.approx(0.91)
    assert ema.current_decay(10**6) == 0.999
    assert EMA(decay=0.99, warmup=False).current_decay(0) == 0.99


def test_fused_update_is_a_lerp() -> None:
    ema = EMA(decay=0.9, warmup=False)
    averaged, current = [torch.zeros(3), torch.ones(2)], [torch.ones(3), torch.zeros(2)]
    ema._update(averaged, current, torch.tensor(1))
    assert torch.allclose(averaged[0], torch.full((3,), 0.1))
    assert torch.allclose(averaged[1], torch.full((2,), 0.9))


def test_average_on_another_device_updates_without_fused_ops() -> None:
    """EMA(device="cpu") on a GPU run: fused ops refuse mixed devices, so the update goes
    tensor by tensor. A meta-device average stands in for the second device here."""
    ema = EMA(decay=0.9, warmup=False)
    averaged, current = [torch.zeros(3, device="meta")], [torch.ones(3)]
    with pytest.raises(RuntimeError):
        ema._update(averaged, current, None)  # the fused path would fail
    ema._same_device = False
    ema._update(averaged, current, None)
    assert averaged[0].device.type == "meta" and averaged[0].shape == (3,)


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 3)
        self.norm = torch.nn.BatchNorm1d(3)  # with an integer buffer: num_batches_tracked


def test_an_update_reads_nothing_back_and_follows_the_optimizer_steps() -> None:
    """Lightning's public update path (``AveragedModel.update_parameters``) reads
    ``n_averaged`` back twice per update, a sync on a GPU; EMA's own path reads nothing."""
    ema, net = EMA(decay=0.9), _Net()
    trainer: Any = SimpleNamespace(global_step=0, callbacks=[ema])
    ema.setup(trainer, net, "fit")
    reads: list[str] = []

    def step(global_step: int) -> dict[str, torch.Tensor]:
        trainer.global_step = global_step
        with pytest.MonkeyPatch.context() as patch:  # count host reads during the update only
            for name in HOST_READS:
                method = getattr(torch.Tensor, name)
                patch.setattr(
                    torch.Tensor,
                    name,
                    lambda t, *a, _n=name, _m=method, **k: reads.append(_n) or _m(t, *a, **k),
                )
            ema.on_train_batch_end(trainer, net, None, None, 0)
        checkpoint: dict[str, Any] = {"state_dict": net.state_dict()}
        ema.on_save_checkpoint(trainer, net, checkpoint)
        return {k: v.clone() for k, v in checkpoint["state_dict"].items()}

    first = step(1)
    assert torch.equal(first["layer.weight"], net.layer.weight)  # starts from the weights
    with torch.no_grad():
        net.layer.weight.add_(1.0)
        net.norm.num_batches_tracked.fill_(7)
    assert torch.equal(step(1)["layer.weight"], first["layer.weight"])  # accumulating: no step
    second = step(2)
    weight = 1 - ema.current_decay(2)  # the warm-up's n is the optimizer step
    expected = first["layer.weight"] + weight * (net.layer.weight - first["layer.weight"])
    assert torch.allclose(second["layer.weight"], expected)
    assert int(second["norm.num_batches_tracked"]) == 7  # integers are copied, not averaged
    assert reads == []


@pytest.mark.gpu
def test_cpu_average_of_a_gpu_model() -> None:
    ema = EMA(decay=0.9, warmup=False)
    ema._same_device = False
    averaged, current = (
        [torch.zeros(3), torch.ones(2)],
        [torch.ones(3).cuda(), torch.zeros(2).cuda()],
    )
    ema._update(averaged, current, None)
    torch.cuda.synchronize()
    assert torch.allclose(averaged[0], torch.full((3,), 0.1))


@pytest.mark.slow
def test_best_checkpoint_scores_and_tests_ema_weights(image_folder: Path) -> None:
    config = _monitor_loss(image_folder.parent)
    cli: Any = run_cli("fit", *config, "--data.data_dir", str(image_folder))
    checkpoint = cli.trainer.checkpoint_callback
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    raw, averaged = best["current_model_state"], best["state_dict"]
    assert any(
        not torch.equal(raw[k], averaged[k]) for k in averaged if averaged[k].is_floating_point()
    )
    # Validating best.ckpt alone reproduces the score it was saved for: the EMA weights.
    validated: Any = run_cli("validate", "--ckpt_path", checkpoint.best_model_path)
    score = float(validated.trainer.callback_metrics["val/loss"])
    assert score == pytest.approx(float(checkpoint.best_model_score), abs=1e-5)


@pytest.mark.slow
def test_resume_restores_raw_and_ema_weights(image_folder: Path) -> None:
    first: Any = run_cli("fit", *FULL, "--data.data_dir", str(image_folder))
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    resumed: Any = run_cli(
        "fit",
        *FULL,
        "--data.data_dir",
        str(image_folder),
        "--trainer.max_epochs",
        "3",
        "--ckpt_path",
        str(last),
        "--trainer.callbacks+=tests.probes.StateProbe",
    )
    seen = probe(resumed)
    for key, value in saved["current_model_state"].items():
        assert torch.equal(seen.raw[key], value), key
    for key, value in saved["state_dict"].items():
        assert torch.equal(seen.ema[key], value), key
    history = (Path(resumed.trainer.log_dir) / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]
