"""Every timm family at the size the data has: built for it, trained a step, exported and
verified; a size a model cannot take is one line naming sizes that work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from classifier.backbone import BackboneError, create_backbone

NAMES = ["cat", "dog", "fox"]

#: (family, timm model: the smallest variant timm has, its native size, another size).
FAMILIES = [
    ("ResNet", "resnet10t", 176, 64),
    ("ConvNeXt", "convnext_atto", 224, 64),
    ("EfficientNet", "efficientnet_b0", 224, 64),
    ("MobileNetV4", "mobilenetv4_conv_small_035", 224, 64),
    ("RegNet", "regnetx_002", 224, 64),
    ("ViT", "vit_tiny_patch16_224", 224, 64),
    ("DeiT", "deit_tiny_patch16_224", 224, 96),
    ("DINOv2", "vit_small_patch14_dinov2", 518, 224),
    ("EVA02", "eva02_tiny_patch14_224", 224, 112),
    ("SigLIP", "vit_base_patch16_siglip_224", 224, 64),
    ("Swin", "swin_tiny_patch4_window7_224", 224, 96),
    ("FastViT", "fastvit_t8", 256, 64),
]


@pytest.fixture(scope="module")
def verify_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[int]]:
    """Six labelled images (two per class), shared by every export in this module."""
    from tests.conftest import make_folder

    root = make_folder(tmp_path_factory.mktemp("sizes"), NAMES, counts={"val": 2})
    paths = sorted((root / "val").rglob("*.png"))
    return paths, [NAMES.index(p.parent.name) for p in paths]


def _one_step(model: Any, size: int) -> None:
    """One optimizer step of Lightning's fit loop on two ``size`` px images."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=generator)
    data = TensorDataset(images, torch.tensor([0, 1]), torch.arange(2))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=2))
    assert trainer.global_step == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "name", "native", "other"), FAMILIES, ids=[f[0] for f in FAMILIES]
)
def test_every_family_trains_and_exports_at_its_native_size_and_another(
    family: str,
    name: str,
    native: int,
    other: int,
    verify_images: tuple[list[Path], list[int]],
    tmp_path: Path,
) -> None:
    from classifier.export import ExportOptions, export_and_verify
    from classifier.model import ImageClassifier
    from classifier.transforms import Preprocessing

    torch.manual_seed(0)
    for size in (native, other):
        model = ImageClassifier(name, NAMES, pretrained=False, image_size=size, lr=1e-4)
        head = model.model.get_classifier().weight.detach().clone()
        _one_step(model, size)
        assert not torch.equal(head, model.model.get_classifier().weight)  # it trained
        pre = Preprocessing.from_crop_pct(size, 1.0, "bilinear", (0.5,) * 3, (0.25,) * 3)
        path = tmp_path / f"{size}.onnx"
        # onnxsim's graph rewrite is the export's own concern (test_export): left out here.
        options = ExportOptions(simplify=False, verify_images=6)
        report = export_and_verify(model.model, path, NAMES, pre, options, verify_images)
        assert report["passed"] and report["images"] == 6, (family, size, report)
        assert json.loads(path.with_suffix(".labels_mapping.json").read_text())
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[2:] == [size, size]
        probe = np.zeros((1, 3, size, size), np.float32)
        assert session.run(None, {"images": probe})[0].shape == (1, 3)


def test_a_local_weights_file_saved_at_another_size_is_resampled_not_dropped(
    tmp_path: Path,
) -> None:
    import timm
    from timm.layers import resample_abs_pos_embed

    source = timm.create_model("test_vit", pretrained=False, num_classes=1000)  # 160 px, 10x10
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("test_vit", 3, str(path), image_size=64)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [4, 4], num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 1 + 16, source.embed_dim)
    assert torch.allclose(model.pos_embed, expected)
    weights = "blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[weights], source.state_dict()[weights])


@pytest.mark.parametrize(
    ("name", "size", "message"),
    [
        ("vit_tiny_patch16_224", 150, r"multiple of its patch size 16 \(e\.g\. 144 or 160"),
        ("vit_small_patch14_dinov2", 230, r"multiple of its patch size 14 \(e\.g\. 224 or 238"),
        ("convnext_atto", 16, r"cannot run at this size .*use at least 32 px"),
    ],
)
def test_a_size_the_model_cannot_take_is_refused_before_any_download(
    name: str, size: int, message: str
) -> None:
    # pretrained=True would download (no internet here): the size is checked first.
    with pytest.raises(BackboneError, match=message) as raised:
        create_backbone(name, 3, pretrained=True, image_size=size)
    assert "\n" not in str(raised.value) and f"data.image_size {size}" in str(raised.value)


def test_the_command_line_refuses_the_size_in_one_line(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import tiny
    from tests.test_attacks import run_entry

    args = ["--model.model_name", "vit_tiny_patch16_224", "--data.image_size", "150"]
    code, err = run_entry(capsys, *tiny("fit", image_folder, *args))
    assert code == 1
    assert err.strip().splitlines() == [
        "error: vit_tiny_patch16_224 at data.image_size 150: the side must be a multiple of "
        "its patch size 16 (e.g. 144 or 160; native 224)"
    ]


@pytest.mark.slow
def test_a_checkpoint_rebuilds_the_network_at_its_training_size(
    image_folder: Path, tmp_path: Path
) -> None:
    """test_vit is built for 160 px; trained at 64, a checkpoint is tested, predicted and
    exported at 64 with no config."""
    from classifier.export import export_checkpoint
    from classifier.model import ImageClassifier
    from tests.conftest import run_cli, tiny

    args = [
        "--model.model_name",
        "test_vit",
        "--data.image_size",
        "64",
        "--trainer.max_epochs",
        "1",
    ]
    cli: Any = run_cli(*tiny("fit", image_folder, *args))
    assert cli.model.model.pos_embed.shape[1] == 1 + 4 * 4
    best = cli.trainer.checkpoint_callback.best_model_path
    assert ImageClassifier.load_from_checkpoint(best).hparams["image_size"] == 64
    tested: Any = run_cli("test", "--ckpt_path", best, "--data.data_dir", str(image_folder))
    assert tested.model.model.pos_embed.shape[1] == 1 + 4 * 4
    assert 0 <= tested.trainer.callback_metrics["test/top1"] <= 1
    folder = str(image_folder / "test")
    predicted: Any = run_cli("predict", "--ckpt_path", best, "--data.predict_dir", folder)
    assert predicted.model.hparams["image_size"] == 64
    # Evaluated at another size, its position embeddings are resampled from the checkpoint's.
    larger: Any = run_cli(
        *["test", "--ckpt_path", best, "--data.data_dir", str(image_folder)],
        *["--data.image_size", "96"],
    )
    assert larger.model.model.pos_embed.shape[1] == 1 + 6 * 6
    assert "test/top1" in larger.trainer.callback_metrics
    out = export_checkpoint(best, output=str(tmp_path / "m.onnx"))
    report = json.loads((tmp_path / "m.export_report.json").read_text())
    assert report["passed"] and out.is_file()
    # A checkpoint claiming another size than its weights were saved for is refused, not
    # quietly resampled (a review's tampered image_size tested at the claimed size).
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["hyper_parameters"]["image_size"] = 96
    checkpoint["datamodule_hyper_parameters"]["image_size"] = 96
    checkpoint["preprocessing"] |= {"image_size": 96, "resize_size": 96}
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    from classifier.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"pos_embed has shape .* not what its image_size"):
        run_cli("test", "--ckpt_path", str(tampered), "--data.data_dir", str(image_folder))


def test_a_weights_file_lacking_a_backbone_tensor_is_refused(tmp_path: Path) -> None:
    """A missing or reshaped learned tensor stayed random under a "pretrained" backbone."""
    import timm

    source = timm.create_model("test_vit", pretrained=False, num_classes=3).state_dict()
    for name, change in (("missing", None), ("reshaped", torch.zeros(10, 10))):
        state = dict(source)
        if change is None:
            del state["blocks.0.attn.qkv.weight"]
        else:
            state["blocks.0.attn.qkv.weight"] = change
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(BackboneError, match=r"blocks\.0\.attn\.qkv\.weight"):
            create_backbone("test_vit", 3, str(path))
    headless = {k: v for k, v in source.items() if not k.startswith("head.")}
    torch.save(headless, tmp_path / "headless.pth")
    assert create_backbone("test_vit", 5, str(tmp_path / "headless.pth")) is not None
