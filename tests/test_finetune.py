"""Fine-tuning controls: a frozen backbone stays bitwise unchanged and costs no backward pass,
thaws on schedule (also resumed, with SAM, EMA, MixUp, accumulation and DDP), and every
parameter group's learning rate is base x schedule x its scale at every step."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from classifier.errors import ConfigError
from classifier.model import ImageClassifier
from classifier.optim import lr_multiplier, optimization
from tests.conftest import classifier_process, run_cli, tiny

NAMES = ["cat", "dog", "fox"]


def _backbone(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Copies of the network's weights and buffers (BN statistics), head left out."""
    net = module.model  # type: ignore[attr-defined]
    head = {id(t) for t in net.get_classifier().parameters()}
    named = [*net.named_parameters(), *net.named_buffers()]
    return {k: v.detach().clone() for k, v in named if id(v) not in head}


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ."""
    return [k for k in a if not torch.equal(a[k], b[k])]


class FreezeProbe(Callback):
    """Record the backbone at the start and at each epoch's end, whether any backbone weight
    got a gradient in each epoch, the optimizer's groups and its rates at every step."""

    def __init__(self, out: str = "") -> None:
        self.out = out
        self.start: dict[str, torch.Tensor] = {}
        self.ends: list[dict[str, torch.Tensor]] = []
        self.grads: dict[int, bool] = {}
        self.groups: list[list[int]] = []
        self.rates: list[tuple[int, list[float]]] = []
        self.head = torch.empty(0)
        self.head_moved: list[bool] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = _backbone(pl_module)
        self.head = pl_module.model.get_classifier().weight.detach().clone()  # type: ignore[attr-defined, operator]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        optimizer = trainer.optimizers[0]
        self.groups.append([id(p) for g in optimizer.param_groups for p in g["params"]])
        self.rates.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups]))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.model  # type: ignore[attr-defined]
        head = {id(t) for t in net.get_classifier().parameters()}
        got = any(p.grad is not None for p in net.parameters() if id(p) not in head)
        epoch = trainer.current_epoch
        self.grads[epoch] = self.grads.get(epoch, False) or got

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ends.append(_backbone(pl_module))
        head = pl_module.model.get_classifier().weight  # type: ignore[attr-defined, operator]
        self.head_moved.append(not torch.equal(self.head, head))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out and trainer.is_global_zero:
            changed = [bool(_differing(self.start, end)) for end in self.ends]
            found = {"changed": changed, "grads": {str(k): v for k, v in self.grads.items()}}
            Path(self.out).write_text(json.dumps(found))


def _probe(cli: Any) -> FreezeProbe:
    return next(c for c in cli.trainer.callbacks if isinstance(c, FreezeProbe))


PROBE = "--trainer.callbacks+=tests.test_finetune.FreezeProbe"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"freeze_backbone_epochs": -2}, r"freeze_backbone_epochs must be -1 .* got -2"),
        ({"backbone_lr_scale": 0.0}, r"backbone_lr_scale must be a finite number above 0"),
        ({"backbone_lr_scale": math.nan}, r"backbone_lr_scale .* got nan"),
        ({"backbone_lr_scale": math.inf}, r"backbone_lr_scale .* got inf"),
        ({"layer_decay": 1.5}, r"layer_decay must be above 0 and below 1"),
        ({"layer_decay": 0.0}, r"layer_decay must be above 0 and below 1"),
        ({"layer_decay": math.nan}, r"layer_decay .* got nan"),
    ],
)
def test_fine_tuning_arguments_are_checked_when_the_model_is_built(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        ImageClassifier("test_resnet", NAMES, pretrained=False, **kwargs)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("scheduler", ["cosine", "multistep"])
def test_every_group_rate_is_base_lr_times_schedule_times_its_scale(scheduler: str) -> None:
    """timm's layer decay only writes ``lr_scale``, which torch's LambdaLR ignores: read the
    rates back from the optimizer at every step of a warm-up and a decay."""
    model = ImageClassifier(
        "vit_tiny_patch16_224",
        NAMES,
        pretrained=False,
        lr=1e-3,
        scheduler=scheduler,  # type: ignore[arg-type]
        warmup_epochs=1,
        milestones=[3],
        layer_decay=0.75,
        backbone_lr_scale=0.5,
    )
    found = optimization(model.model, model.hparams, steps_per_epoch=4, total_steps=20)
    optimizer, scheduled = found["optimizer"], found["lr_scheduler"]["scheduler"]
    groups = optimizer.param_groups
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names) and {"head", "head_no_decay"} <= set(names)
    scale = {g["name"]: g["lr_scale"] for g in groups}
    assert scale["head"] == 1.0 and scale["backbone_d1"] == pytest.approx(0.5 * 0.75)
    assert scale["backbone_d13_no_decay"] == pytest.approx(0.5 * 0.75**13)  # patch embedding
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.model.parameters())  # each once
    factor = lr_multiplier(scheduler, 20, 4, warmup_epochs=1, milestones=[3])  # type: ignore[arg-type]
    for step in range(20):
        for group in groups:
            assert group["lr"] == pytest.approx(1e-3 * factor(step) * group["lr_scale"], rel=1e-9)
        assert len({round(g["lr"], 15) for g in groups}) == 14  # 13 backbone depths + the head
        optimizer.step()
        scheduled.step()


def test_without_scales_the_groups_stay_as_before() -> None:
    """No scale asked for: timm's two weight-decay groups (named), so older checkpoints'
    optimizer states still load."""
    model = ImageClassifier("test_resnet", NAMES, pretrained=False)
    found = optimization(model.model, model.hparams, steps_per_epoch=2, total_steps=4)
    assert [g["name"] for g in found["optimizer"].param_groups] == ["network_no_decay", "network"]


def test_checkpoint_weights_keep_their_names() -> None:
    plain = ImageClassifier("test_resnet", NAMES, pretrained=False)
    tuned = ImageClassifier(
        "test_resnet",
        NAMES,
        pretrained=False,
        freeze_backbone_epochs=2,
        train_bn=True,
        backbone_lr_scale=0.1,
        layer_decay=0.8,
    )
    assert list(plain.state_dict()) == list(tuned.state_dict())


@pytest.mark.slow
def test_a_frozen_epoch_leaves_the_backbone_bitwise_then_it_thaws(image_folder: Path) -> None:
    args = ["--model.freeze_backbone_epochs", "1", "--model.backbone_lr_scale", "0.1", PROBE]
    cli: Any = run_cli(*tiny("fit", image_folder, *args))
    probe = _probe(cli)
    frozen, thawed = probe.ends
    assert _differing(probe.start, frozen) == []  # weights and BN statistics, bit for bit
    assert probe.head_moved[0]  # the head trained in the frozen epoch
    assert {"conv1.1.running_mean", "conv1.0.weight"} <= set(_differing(frozen, thawed))
    assert probe.grads == {0: False, 1: True}  # no gradient reached the frozen backbone
    assert all(g == probe.groups[0] for g in probe.groups)  # the same groups from step 0
    assert all(p.requires_grad for p in cli.model.parameters())  # thawed after the fit
    # The rates: base x schedule x scale at every step, frozen or not (the head's 10x).
    names = [g["name"] for g in cli.trainer.optimizers[0].param_groups]
    for step, rates in probe.rates:
        by_name = dict(zip(names, rates, strict=True))
        assert by_name["backbone"] == pytest.approx(0.1 * by_name["head"], rel=1e-9), step


@pytest.mark.slow
def test_train_bn_trains_the_norms_of_the_frozen_backbone_only(image_folder: Path) -> None:
    args = ["--model.freeze_backbone_epochs", "-1", "--model.train_bn", "true", PROBE]
    cli: Any = run_cli(*tiny("fit", image_folder, *args))
    probe = _probe(cli)
    changed = set(_differing(probe.start, probe.ends[-1]))
    modules = dict(cli.model.model.named_modules())
    norms = {n for n, m in modules.items() if isinstance(m, torch.nn.BatchNorm2d)}
    convs = {n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)}
    assert norms and convs
    assert all({f"{n}.weight", f"{n}.running_mean"} <= changed for n in norms)
    assert not {f"{n}.weight" for n in convs} & changed


@pytest.mark.slow
def test_a_linear_probe_keeps_the_backbone_for_the_whole_run(image_folder: Path) -> None:
    """``-1`` with a local weights file: the checkpoint's backbone is the file's, bit for bit;
    LearningRateMonitor logs one rate per group, by name."""
    import timm

    weights = image_folder.parent / "backbone.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), weights)
    args = ["--model.pretrained", str(weights), "--model.freeze_backbone_epochs", "-1"]
    args += ["--model.backbone_lr_scale", "0.5"]
    args += ["--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"]
    cli: Any = run_cli(*tiny("fit", image_folder, *args))
    saved = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    source = torch.load(weights, weights_only=True)
    state = {k[6:]: v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    assert [
        k for k in source if not k.startswith("fc.") and not torch.equal(source[k], state[k])
    ] == []
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "metrics.csv").open()))
    columns = {k for r in rows for k, v in r.items() if k.startswith("lr-") and v}
    assert columns == {
        "lr-AdamW/head",
        "lr-AdamW/head_no_decay",
        "lr-AdamW/backbone",
        "lr-AdamW/backbone_no_decay",
    }
    row = next(r for r in rows if r.get("lr-AdamW/head"))
    assert float(row["lr-AdamW/backbone"]) == pytest.approx(0.5 * float(row["lr-AdamW/head"]))


@pytest.mark.slow
def test_freezing_works_with_sam_ema_mixup_and_accumulation(image_folder: Path) -> None:
    args = ["--model.freeze_backbone_epochs", "1", "--model.optimizer", "sam", PROBE]
    args += ["--model.mixup", "0.4", "--trainer.accumulate_grad_batches", "2"]
    args += ["--trainer.callbacks+=classifier.EMA", "--trainer.callbacks.init_args.decay=0.9"]
    cli: Any = run_cli(*tiny("fit", image_folder, *args))
    probe = _probe(cli)
    assert _differing(probe.start, probe.ends[0]) == [] and _differing(probe.ends[0], probe.ends[1])
    assert probe.grads == {0: False, 1: True}
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 4  # 36 images: 4 full batches of 8, 2 per step


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_freezes_then_thaws_and_plain_ddp_is_refused_in_one_line(
    image_folder: Path, tmp_path: Path
) -> None:
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    args = [*tiny("fit", image_folder, *ddp), "--model.freeze_backbone_epochs", "1"]
    refused = classifier_process(*args, "--trainer.strategy", "ddp", cwd=tmp_path)
    assert refused.returncode == 1
    # Each process prints it (both stop at once; their lines may interleave): no traceback.
    assert "Traceback" not in refused.stderr
    assert (
        "error: model.freeze_backbone_epochs under DDP needs trainer.strategy "
        "ddp_find_unused_parameters_true (frozen parameters get no gradient)"
    ) in refused.stderr
    out = tmp_path / "probe.json"
    args += ["--trainer.strategy", "ddp_find_unused_parameters_true", PROBE]
    done = classifier_process(*args, f"--trainer.callbacks.init_args.out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text()) == {
        "changed": [False, True],
        "grads": {"0": False, "1": True},
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("probe", "status", "epoch"),
    [("TermAt", 143, 0), ("KillAt", -9, 1)],
    ids=["sigterm-in-the-frozen-epoch", "sigkill-in-the-thawed-epoch"],
)
def test_a_resumed_lp_ft_run_is_bitwise_the_uninterrupted_one(
    image_folder: Path, tmp_path: Path, probe: str, status: int, epoch: int
) -> None:
    """Stopped mid-epoch in the frozen epoch (resumed there) or in the first thawed one
    (resumed from the frozen epoch's end): the same weights, EMA weights and optimizer state."""
    from tests.test_resume import ARGS

    data = ["--data.data_dir", str(image_folder), "--trainer.max_epochs", "3"]
    data += ["--model.freeze_backbone_epochs", "1", "--model.layer_decay", "0.7"]
    whole: Any = run_cli("fit", *ARGS, *data)
    stopped = classifier_process(
        "fit",
        *ARGS,
        *data,
        f"--trainer.callbacks+=tests.probes.{probe}",
        f"--trainer.callbacks.init_args.epoch={epoch}",
        "--trainer.callbacks.init_args.batch=2",
        cwd=tmp_path,
        timeout=300,
    )
    assert stopped.returncode == status, stopped.stderr[-2000:]
    resumed: Any = run_cli("fit", *ARGS, *data, "--ckpt_path", "last")
    first, second = Path(whole.trainer.log_dir), Path(resumed.trainer.log_dir)
    a = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "current_model_state"):  # EMA weights, then raw weights
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs"
    states = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert states[0].keys() == states[1].keys()
    for index, moments in states[0].items():
        assert all(torch.equal(v, states[1][index][k]) for k, v in moments.items())
