"""``classifier-export --ckpt_path best.ckpt``: export a finished checkpoint to ONNX later,
verified like the export at the end of fit (``classifier-export --help``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from classifier.checkpoint import CheckpointError, rule_of
from classifier.export import ExportOptions, describe, export_and_verify, sidecar
from classifier.files import run_of_checkpoint
from classifier.transforms import Preprocessing
from classifier.verify import ExportError


def export_checkpoint(
    ckpt_path: str,
    output: str | None = None,
    opset: int = 18,
    uint8_input: bool = False,
    simplify: bool = True,
    images: str | None = None,
    verify_images: int = 64,
    atol: float = 1e-3,
    min_agreement: float = 0.99,
    overwrite: bool = False,
    quantize: Literal["none", "int8"] = "none",
    int8_min_agreement: float = 0.99,
) -> Path:
    """Export a finished checkpoint to ONNX and verify it on real images.

    Args:
        ckpt_path: a checkpoint written by ``classifier fit``.
        output: the ONNX file; default ``model.onnx`` in the run folder the checkpoint belongs
            to (``<run>/checkpoints/x.ckpt``), else ``<checkpoint name>.onnx`` beside it.
        opset: ONNX opset (>= 17).
        uint8_input: put normalisation inside the graph (``uint8`` RGB input).
        simplify: simplify the graph with onnxsim.
        images: folder of images to verify with (class sub-folders give accuracy); default
            the ``val/`` split the model was trained with, when it exists.
        verify_images: how many images to verify with (0 skips verification).
        atol: largest allowed absolute logit difference.
        min_agreement: smallest allowed fraction of images with the same top-1 class.
        overwrite: replace an existing ONNX file at the output path.
        quantize: ``int8`` also writes ``<name>_int8.onnx`` (static INT8 quantisation,
            calibrated on the checkpoint's ``train/`` images, else the verification images),
            verified against PyTorch like the fp32 file.
        int8_min_agreement: smallest allowed fraction of images on which the INT8 model's
            top-1 class is PyTorch's.
    """
    from classifier.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(ckpt_path)
    network, names, data = _network(checkpoint, ckpt_path)
    path = Path(output) if output else default_output(Path(ckpt_path))
    if os.path.realpath(path) == os.path.realpath(ckpt_path):
        raise ExportError(f"--output {path} is the checkpoint itself; choose another file.")
    if not overwrite:
        _refuse_existing(path, int8=quantize == "int8")
    val = Path(data.get("data_dir", "data")) / "val"
    folder = Path(images) if images else val if val.is_dir() else val.with_name("valid")
    options = ExportOptions(
        opset,
        simplify,
        uint8_input,
        verify_images,
        atol,
        min_agreement,
        quantize,
        int8_min_agreement,
    )
    verification = _images(folder, names) if verify_images else None
    train = _images(Path(data.get("data_dir", "data")) / "train", names)
    calibration = (train or verification or ([], []))[0]
    report = export_and_verify(
        network,
        path,
        names,
        Preprocessing.from_dict(checkpoint["preprocessing"]),
        options,
        verification,
        float(checkpoint["temperature"]),
        owned=True,  # a network built for this export
        calibration=calibration,
        selector=rule_of(checkpoint, network, ckpt_path),
    )
    print(describe(path, report))
    return path


def _refuse_existing(path: Path, int8: bool) -> None:
    """Stop before anything is written if ``path``, its INT8 sibling (``int8``) or their
    side files exist."""
    models = [path, path.with_name(f"{path.stem}_int8.onnx")] if int8 else [path]
    described = [
        f
        for m in models
        for f in (m, sidecar(m, "labels_mapping.json"), sidecar(m, "export_report.json"))
    ]
    existing = [str(f) for f in described if os.path.lexists(f)]
    if existing:
        raise ExportError(
            f"{', '.join(existing)} exist(s); pass --overwrite true to replace, or --output FILE."
        )


def _network(checkpoint: dict[str, Any], ckpt_path: str) -> tuple[Any, list[str], dict[str, Any]]:
    """The checkpoint's network with its weights, its class names and its data arguments."""
    from classifier.arguments import checkpoint_config
    from classifier.model import ImageClassifier

    if "preprocessing" not in checkpoint:
        raise ExportError(f"{ckpt_path} stores no preprocessing; was it trained by classifier?")
    config = checkpoint_config(checkpoint, ckpt_path)
    names: list[str] = config["data"]["class_names"]
    model = ImageClassifier(class_names=names, **config["model"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # weights of another shape: not what its arguments build
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{ckpt_path}: its weights do not fit its model ({first})") from None
    return model.model, names, config["data"]


def _images(folder: Path, names: list[str]) -> tuple[Sequence[Path], np.ndarray] | None:
    """The images (and labels, from class folders) to verify with; ``None`` without a folder."""
    from classifier.splits import read_unlabelled

    if not folder.is_dir():
        return None
    split = read_unlabelled(folder, names)
    return split.paths, split.labels


def default_output(ckpt_path: Path) -> Path:
    """``<run>/model.onnx`` for a checkpoint in a run's ``checkpoints/`` folder (one holding
    ``config.yaml``, ``hparams.yaml`` or ``metrics.csv``), else ``<name>.onnx`` beside it.

    Raises:
        ExportError: the folder beside the checkpoint is a symbolic link (the export would
            land wherever it points).
    """
    run = run_of_checkpoint(ckpt_path)
    if run is not None:
        return run / "model.onnx"
    folder = Path(os.path.abspath(ckpt_path)).parent
    if folder.is_symlink():
        raise ExportError(
            f"{folder} is a symbolic link: the export would be written where it points; "
            "pass --output FILE."
        )
    return folder / f"{ckpt_path.stem}.onnx"


def main(args: list[str] | None = None) -> None:
    """``classifier-export --ckpt_path best.ckpt``; user errors print as one line."""
    from jsonargparse import auto_cli
    from PIL import Image

    from classifier.errors import one_line_errors
    from classifier.safety import enforce_import_policy

    enforce_import_policy()
    # Beyond the CLI's user errors: unreadable verification images and bad paths.
    with one_line_errors(OSError, ValueError, Image.DecompressionBombError):
        auto_cli(export_checkpoint, args=args, as_positional=False)


if __name__ == "__main__":
    main()
