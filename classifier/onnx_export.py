"""``OnnxExport``: the trained model as a verified ONNX file when fit ends."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module, optional_image_data
from classifier.checkpoint import rule_of
from classifier.export import ExportOptions, contract, describe, export_and_verify
from classifier.file_io import run_dir
from classifier.selective import Selector
from classifier.verify import ExportError


class OnnxExport(Callback):
    """Export the trained model to ONNX at the end of ``fit`` and verify it.

    Writes ``model.onnx``, ``labels_mapping.json`` and ``export_report.json`` into the run
    folder (with ``all``: ``model_best.onnx``, ``model_best.labels_mapping.json``, ...,
    ``model_final.onnx``, ...). Verification runs
    the file with onnxruntime on real validation images against the PyTorch model; a top-1
    disagreement rate or logit difference beyond tolerance raises an error.

    Args:
        export: ``best`` (the best checkpoint's weights), ``final`` (the weights at the end of
            training; EMA weights when EMA is on) or ``all`` (both).
        opset: ONNX opset (>= 17).
        simplify: simplify the graph with onnxsim (falls back to the plain graph with a
            warning).
        uint8_input: put normalisation inside the graph, so the input is ``uint8`` RGB and a
            consumer cannot get mean/std wrong.
        verify_images: validation images used to verify the export (0 skips verification).
        atol: largest allowed absolute logit difference between onnxruntime and PyTorch.
        min_agreement: smallest allowed fraction of images with the same top-1 class.
        quantize: ``int8`` also writes ``model_int8.onnx`` (ONNX Runtime static quantisation,
            calibrated on training images) with its own ``labels_mapping.json`` and
            ``export_report.json``, verified against PyTorch on the validation images; a
            quantisation that fails its check is an error and leaves the fp32 export.
        int8_min_agreement: smallest allowed fraction of images on which the INT8 model's
            top-1 class is PyTorch's.
    """

    def __init__(
        self,
        export: Literal["best", "final", "all"] = "best",
        opset: int = 18,
        simplify: bool = True,
        uint8_input: bool = False,
        verify_images: int = 64,
        atol: float = 1e-3,
        min_agreement: float = 0.99,
        quantize: Literal["none", "int8"] = "none",
        int8_min_agreement: float = 0.99,
    ) -> None:
        self.export = export
        self.options = ExportOptions(
            opset,
            simplify,
            uint8_input,
            verify_images,
            atol,
            min_agreement,
            quantize,
            int8_min_agreement,
        )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Export (rank 0 only) once training has finished."""
        if not trainer.is_global_zero or trainer.interrupted:
            return
        folder = run_dir(trainer)
        model = classifier_module(pl_module)
        # (name, network, temperature, accept/reject rule, whether the network is a copy)
        targets: list[tuple[str, nn.Module, float, Selector | None, bool]] = []
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if self.export in ("best", "all"):
            if best:
                targets.append(("best", *_load_weights(trainer, pl_module, best), True))
            else:
                warnings.warn("no best checkpoint; exporting the final weights", stacklevel=2)
        if self.export in ("final", "all") or not targets:
            targets.append(("final", model.model, model.temperature, model.selector, False))
        data = optional_image_data(trainer)
        val = data.files("val") if data is not None else None
        train = data.files("train") if data is not None else None
        calibration = (train or val or ([], []))[0]
        if model.preprocessing is None:
            raise ExportError("the model has no preprocessing; was it set up by a data module?")
        for name, net, temperature, selector, owned in targets:
            path = folder / ("model.onnx" if len(targets) == 1 else f"model_{name}.onnx")
            report = export_and_verify(
                net,
                path,
                model.class_names,
                model.preprocessing,
                self.options,
                val,
                temperature,
                owned,
                calibration,
                selector,
            )
            rank_zero_info(describe(path, report))
            for shown in (report, report.get("int8")):
                if isinstance(shown, dict):
                    _hand_report(folder, shown)
            if name == targets[0][0]:
                described = contract(
                    model.preprocessing,
                    model.class_names,
                    self.options.uint8_input,
                    temperature,
                    selector,
                )
                rows = [(k, described[k]) for k in CONTRACT_SHOWN if k in described]
                heading = "Preprocessing contract"
                report_items.table(folder, "export", "export/contract", ("", ""), rows, heading)


#: What ``report.html`` shows of an export's verification and of its preprocessing contract.
REPORT_SHOWN = (
    "images",
    "top1_agreement",
    "max_abs_logit_diff",
    "top1_pytorch",
    "top1_onnxruntime",
    "accepted_agreement",
    "max_rel_distance_diff",
)
CONTRACT_SHOWN = (
    "image_size",
    "resize_size",
    "interpolation",
    "mean",
    "std",
    "input_dtype",
    "input_range",
    "output",
    "reject_threshold",
    "distance_threshold",
)


def _hand_report(folder: Path, report: dict[str, Any]) -> None:
    """Hand ``report.html`` one exported file's verification."""
    verdict = (
        "passed"
        if report.get("passed")
        else ("not verified" if not report.get("verified") else "FAILED")
    )
    rows = [(k, report[k]) for k in REPORT_SHOWN if k in report]
    heading = f"{report.get('file', '')}: {verdict}"
    key = f"export/{report.get('file', '')}"
    report_items.table(folder, "export", key, ("", ""), rows, heading)


def _load_weights(
    trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt_path: str
) -> tuple[nn.Module, float, Selector | None]:
    """A copy of the network with the weights of ``ckpt_path`` (once this run's writes are on
    disk), its temperature and its accept/reject rule."""
    from classifier.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(trainer, ckpt_path)
    network = classifier_module(pl_module).network_copy(checkpoint["state_dict"])
    selector = rule_of(checkpoint, network, ckpt_path)
    return network, float(checkpoint["temperature"]), selector
