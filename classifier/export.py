"""ONNX export with the preprocessing contract in its metadata, verified on real images: the
one routine (:func:`export_and_verify`) behind the ``OnnxExport`` callback and the
``classifier-export`` command (:func:`main`).

The module an ONNX export traces: the network with its outputs (:data:`OUTPUTS`) and,
optionally, its normalisation inside the graph. Verification runs the same module in PyTorch,
so every output the file has is compared with what PyTorch computes.

``classifier-export --ckpt_path best.ckpt``: export a finished checkpoint to ONNX later,
verified like the export at the end of fit (``classifier-export --help``).

INT8 ONNX models: ONNX Runtime's static quantisation of a verified fp32 export.

Weights are quantised per output channel to signed 8 bits and activations to unsigned 8 bits,
with ranges calibrated (min-max) on real images of the run's own data, in the QDQ format that
ONNX Runtime fuses into integer kernels when it loads the file. Weights use 7 bits of range
(``reduce_range``): the 8-bit products of CPUs without VNNI (most AVX2 machines) can overflow
their 16-bit sums otherwise. The file keeps the fp32 export's metadata (the preprocessing
contract) and says how it was quantised.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from classifier.checkpoint import CheckpointError, rule_of
from classifier.file_io import atomic_write_bytes, run_of_checkpoint, write_json
from classifier.selective import Selector, features_and_logits
from classifier.transforms import Preprocessing
from classifier.verify import ExportError, spread, verify_onnx

#: Calibration images, at most (more cost time and barely move min-max ranges).
CALIBRATION_IMAGES = 256


def quantize_int8(source: Path, target: Path, batches: Iterable[np.ndarray]) -> None:
    """Write ``target``: the ONNX model ``source`` quantised to INT8 with activation ranges
    calibrated on ``batches`` (inputs as the model takes them), written atomically.

    Raises:
        ValueError: no calibration batch was given.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    feed = [np.ascontiguousarray(b) for b in batches]
    if not feed:
        raise ValueError("INT8 quantisation needs calibration images")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(feed)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch}

    metadata = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    with tempfile.TemporaryDirectory(prefix="classifier-int8-") as scratch:
        prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # The accept/reject rule's distance stays float (its thresholds were set on it), and
        # so does the path from the logits to the probabilities: they stay the calibrated
        # softmax of the logits the file returns, as verification checks.
        graph = onnx.load(str(prepared)).graph
        float_nodes = [n.name for n in graph.node if "/distance/" in n.name]
        float_nodes += _probability_nodes(graph)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes,
        )
        model = onnx.load(str(quantized))
    del model.metadata_props[:]
    for key, value in {**metadata, "quantization": '"int8 static, QDQ, per-channel"'}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(target, model.SerializeToString())


def _probability_nodes(graph: Any) -> list[str]:
    """The nodes between the ``logits`` output and the ``probabilities`` output (the
    temperature's division and the softmax), empty without a ``probabilities`` output."""
    outputs = [o.name for o in graph.output]
    if "probabilities" not in outputs:
        return []
    producer = {out: node for node in graph.node for out in node.output}
    names, todo, seen = [], ["probabilities"], set()
    while todo:
        tensor = todo.pop()
        node = producer.get(tensor)
        if tensor == outputs[0] or node is None or node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        todo.extend(node.input)
    return names


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


#: The outputs of an export, in order (the last two with an accept/reject rule).
OUTPUTS = ("logits", "probabilities", "distance", "accepted")


class Exportable(nn.Module):
    """The network, optionally with normalisation (``uint8`` RGB input) inside the graph, with
    the outputs ``logits`` (first, as consumers of plain exports expect) and calibrated
    ``probabilities`` (``softmax(logits / T)``); with a selector also ``distance`` (to the
    nearest training class, in feature space) and ``accepted`` (the prediction passes both
    thresholds)."""

    def __init__(
        self,
        net: nn.Module,
        pre: Preprocessing,
        uint8_input: bool,
        temperature: float,
        selector: Selector | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.uint8_input = uint8_input
        mean, std = pre.mean_std(scale=255.0)
        self.mean, self.std = nn.Buffer(mean), nn.Buffer(std)
        self.temperature = nn.Buffer(torch.tensor(float(temperature)))
        self.distance = selector.distance() if selector is not None else None
        limits = (0.0, 0.0)
        if selector is not None:
            limits = (selector.confidence_threshold, selector.distance_threshold)
        self.thresholds = nn.Buffer(torch.tensor(limits))

    @override
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.uint8_input:
            images = (images.float() - self.mean) / self.std
        if self.distance is None:
            logits: torch.Tensor = self.net(images)
            return logits, (logits / self.temperature).softmax(dim=1)
        features, logits = features_and_logits(self.net, images)
        probabilities = (logits / self.temperature).softmax(dim=1)
        distance = self.distance(features)
        confident = probabilities.max(1).values >= self.thresholds[0]
        return logits, probabilities, distance, confident & (distance <= self.thresholds[1])


OPSET_MIN = 17


def export_onnx(
    net: nn.Module,
    path: Path,
    class_names: list[str],
    pre: Preprocessing,
    opset: int = 18,
    uint8_input: bool = False,
    simplify: bool = True,
    temperature: float = 1.0,
    selector: Selector | None = None,
) -> Path:
    """Export ``net`` to one self-contained ONNX file with a dynamic batch axis.

    The file is written under an exclusively created temporary name in the same folder and
    renamed only when complete.
    """
    import onnx

    if opset < OPSET_MIN:
        raise ValueError(f"opset must be >= {OPSET_MIN}, got {opset}")
    wrapper = Exportable(net, pre, uint8_input, temperature, selector).eval().cpu().float()
    outputs = OUTPUTS if selector is not None else OUTPUTS[:2]
    dtype = torch.uint8 if uint8_input else torch.float32
    dummy = torch.zeros(2, 3, pre.image_size, pre.image_size, dtype=dtype)
    graph = io.BytesIO()  # in memory: the file is written once, complete, by the atomic writer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript exporter needs no onnxscript and writes one file.
        torch.onnx.export(
            wrapper,
            (dummy,),
            graph,  # type: ignore[arg-type]  # file objects work with dynamo=False
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in ("images", *outputs)},
        )
    model = onnx.load_from_string(graph.getvalue())
    if simplify:
        model = _simplify(model)
    for key, value in contract(pre, class_names, uint8_input, temperature, selector).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return path


def contract(
    pre: Preprocessing,
    class_names: list[str],
    uint8_input: bool,
    temperature: float,
    selector: Selector | None,
) -> dict[str, Any]:
    """The export's description (ONNX metadata and ``labels_mapping.json``): the
    preprocessing contract, and the accept/reject rule when there is one."""
    described = pre.contract(class_names, uint8_input, temperature)
    if selector is not None:
        described |= selector.summary()
        described["outputs"] = list(OUTPUTS)
        described["accepted_rule"] = (
            "accepted = max(probabilities) >= reject_threshold and distance <= distance_threshold"
        )
    return described


def _simplify(model: Any) -> Any:
    try:
        from onnxsim import simplify

        simplified, ok = simplify(model)
        if ok:
            return simplified
        warnings.warn(
            "onnxsim could not validate the simplified graph; kept the plain graph", stacklevel=3
        )
    except Exception as error:  # onnxsim fails on some exotic ops
        warnings.warn(f"onnxsim failed ({error}); kept the plain graph", stacklevel=3)
    return model


@dataclass(frozen=True)
class ExportOptions:
    """How to export and when an export passes (see :class:`OnnxExport` for each field)."""

    opset: int = 18
    simplify: bool = True
    uint8_input: bool = False
    verify_images: int = 64
    atol: float = 1e-3
    min_agreement: float = 0.99
    quantize: Literal["none", "int8"] = "none"
    int8_min_agreement: float = 0.99

    def __post_init__(self) -> None:
        if self.opset < OPSET_MIN:
            raise ValueError(f"opset must be >= {OPSET_MIN}, got {self.opset}")
        limits = {
            "atol": self.atol,
            "min_agreement": self.min_agreement,
            "int8_min_agreement": self.int8_min_agreement,
        }
        for name, value in limits.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of 0 or more, got {value}")
        if self.quantize not in ("none", "int8"):
            raise ValueError(f"quantize must be none or int8, got {self.quantize!r}")

    def passed(self, report: dict[str, Any]) -> bool:
        """The one pass rule: logits within ``atol``, the shipped probabilities the calibrated
        softmax of the logits, and top-1 agreement (and agreement of the accept decisions,
        with an accept/reject rule) of ``min_agreement``. NaN or infinity anywhere fails."""
        return bool(
            report["max_abs_logit_diff"] <= self.atol
            and probabilities_ok(report)
            and report["top1_agreement"] >= self.min_agreement
            and report.get("accepted_agreement", 1.0) >= self.min_agreement
        )


#: How far an export's ``probabilities`` may be from ``softmax(its logits / temperature)``.
PROBABILITY_TOLERANCE = 1e-4


def probabilities_ok(report: dict[str, Any]) -> bool:
    """Whether a verification report's probabilities are the calibrated softmax of its logits
    (within :data:`PROBABILITY_TOLERANCE`)."""
    return bool(report.get("max_abs_probability_diff", 0.0) <= PROBABILITY_TOLERANCE)


def export_and_verify(
    net: nn.Module,
    path: Path,
    class_names: list[str],
    pre: Preprocessing,
    options: ExportOptions,
    images: tuple[Sequence[Path], Sequence[int] | np.ndarray] | None = None,
    temperature: float = 1.0,
    owned: bool = False,
    calibration: Sequence[Path] | None = None,
    selector: Selector | None = None,
) -> dict[str, Any]:
    """Export ``net`` to ``path``, describe it, verify it on ``images`` and report; with
    ``options.quantize == "int8"`` also an INT8 model (``model_int8.onnx`` beside
    ``model.onnx``, :func:`export_onnx`), calibrated on ``calibration`` images and
    verified on the same ``images`` (its report is ``report["int8"]``).

    ``net`` is copied first, so the caller's model stays where it is, unless ``owned``: a
    network made for the export (a checkpoint's weights) is moved to the CPU as it is.

    The one export routine (the ``OnnxExport`` callback and ``classifier-export`` both call
    it) and the only writer of the files beside the model: ``labels_mapping.json`` and
    ``export_report.json`` (see :func:`sidecar`). Verification uses up to
    ``options.verify_images`` of ``images`` (paths, labels), spread over the list.

    Raises:
        ExportError: the ONNX model disagrees with ``net`` beyond the options' tolerances
            (the report is written first).
    """
    net = (net if owned else copy.deepcopy(net)).cpu().float().eval()
    reference = Exportable(net, pre, False, temperature, selector).eval()
    export_onnx(
        net,
        path,
        class_names,
        pre,
        options.opset,
        options.uint8_input,
        options.simplify,
        temperature,
        selector,
    )
    described = contract(pre, class_names, options.uint8_input, temperature, selector)
    write_json(sidecar(path, "labels_mapping.json"), described)
    report: dict[str, Any] = {"file": path.name, "opset": options.opset, "verified": False}
    chosen = spread(images[0], options.verify_images) if images else []
    if images and chosen:
        paths, labels = [images[0][i] for i in chosen], [images[1][i] for i in chosen]
        report |= verify_onnx(path, reference, paths, labels, pre, options.uint8_input)
        if report["images"]:  # none readable: nothing was compared
            report |= {"verified": True, "passed": options.passed(report)}
    write_json(sidecar(path, "export_report.json"), report)
    if report.get("passed") is False:
        raise _disagreement(path, report, options)
    if options.quantize == "int8":
        checked = (paths, labels) if images and chosen else None
        report["int8"] = _int8(reference, path, pre, options, checked, calibration or [], described)
    return report


def _disagreement(path: Path, report: dict[str, Any], options: ExportOptions) -> ExportError:
    """The one-line error of an export that failed verification."""
    return ExportError(
        f"ONNX export {path} disagrees with PyTorch: top-1 agreement "
        f"{report['top1_agreement']:.4f}, accept decisions' agreement "
        f"{report.get('accepted_agreement', 1.0):.4f} (min {options.min_agreement}), max "
        f"|logit difference| {report['max_abs_logit_diff']:.2e} (atol {options.atol}), "
        f"probabilities {report.get('max_abs_probability_diff', 0.0):.1e} from the calibrated "
        f"softmax of its logits (at most {PROBABILITY_TOLERANCE})."
    )


def _int8(
    reference: nn.Module,
    path: Path,
    pre: Preprocessing,
    options: ExportOptions,
    images: tuple[list[Path], list[int]] | None,
    calibration: Sequence[Path],
    contract: dict[str, Any],
) -> dict[str, Any]:
    """Quantise the verified fp32 file ``path``, verify the result against ``reference`` (the
    module it was traced from) like the fp32 one (its own pass rule: top-1 agreement of
    ``int8_min_agreement``; the accept decisions' agreement is reported) and only then put it
    in place; a failed check leaves the fp32 export alone and raises."""

    target = path.with_name(f"{path.stem}_int8.onnx")
    unverified = target.with_name(f".{target.name}.unverified")
    chosen = [calibration[i] for i in spread(calibration, CALIBRATION_IMAGES)]
    batches = input_batches(chosen, pre, options.uint8_input)
    try:
        quantize_int8(path, unverified, batches)
        report: dict[str, Any] = {"file": target.name, "quantization": "int8", "verified": False}
        report["calibration_images"] = len(chosen)
        report["size_ratio"] = round(unverified.stat().st_size / path.stat().st_size, 4)
        if images is not None:
            report |= verify_onnx(unverified, reference, *images, pre, options.uint8_input)
            if report["images"]:
                agrees = report["top1_agreement"] >= options.int8_min_agreement
                passed = agrees and probabilities_ok(report)
                report |= {"verified": True, "passed": passed}
        write_json(sidecar(target, "export_report.json"), report)
        if report.get("passed") is False:
            raise ExportError(
                f"the INT8 export of {path.name} agrees with PyTorch on "
                f"{report['top1_agreement']:.4f} of top-1 predictions (min "
                f"{options.int8_min_agreement}), probabilities "
                f"{report.get('max_abs_probability_diff', 0.0):.1e} from the calibrated softmax "
                f"of its logits; {path.name} stays, no INT8 file was written."
            )
        unverified.replace(target)
    finally:
        unverified.unlink(missing_ok=True)
    write_json(sidecar(target, "labels_mapping.json"), {**contract, "quantization": "int8"})
    return report


def input_batches(
    paths: Sequence[Path], pre: Preprocessing, uint8_input: bool, batch_size: int = 16
) -> Iterator[np.ndarray]:
    """The readable images of ``paths`` as the export takes them, in batches."""
    from classifier.transforms import eval_transform, normalize
    from classifier.verify import readable

    mean, std = pre.mean_std()
    pending: list[torch.Tensor] = []
    for image, _ in readable(paths, [0] * len(paths), eval_transform(pre)):
        pending.append(image)
        if len(pending) == batch_size:
            yield _as_input(torch.stack(pending), mean, std, uint8_input, normalize)
            pending = []
    if pending:
        yield _as_input(torch.stack(pending), mean, std, uint8_input, normalize)


def _as_input(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, uint8: bool, normalize: Any
) -> np.ndarray:
    array: np.ndarray = images.numpy() if uint8 else normalize(images, mean, std).numpy()
    return array


def describe(path: Path, report: dict[str, Any]) -> str:
    """Lines for the console: where the export is and how it was verified."""
    if not report.get("verified"):
        line = f"Exported {path} (not verified: no images to compare on)"
    else:
        line = (
            f"Exported {path}: verified on {report['images']} images, top-1 agreement "
            f"{report['top1_agreement']:.1%}, largest logit difference "
            f"{report['max_abs_logit_diff']:.1e}{_decisions(report)}"
            f" ({sidecar(path, 'export_report.json').name})"
        )
    int8 = report.get("int8")
    if int8:
        target = path.with_name(int8["file"])
        verdict = (
            f"top-1 agreement with PyTorch {int8['top1_agreement']:.1%}{_decisions(int8)} on"
            f" {int8['images']} images"
            if int8.get("verified")
            else "not verified"
        )
        line += f"\nExported {target}: INT8, {int8['size_ratio']:.2f}x the size, {verdict}"
    return line


def _decisions(report: dict[str, Any]) -> str:
    agreement = report.get("accepted_agreement")
    return "" if agreement is None else f", accept decisions {agreement:.1%} the same"


def sidecar(onnx_path: Path, name: str) -> Path:
    """A file that describes ``onnx_path``: ``labels_mapping.json`` beside ``model.onnx``,
    ``fp32.labels_mapping.json`` beside ``fp32.onnx`` (two exports in one folder never share)."""
    prefix = "" if onnx_path.name == "model.onnx" else f"{onnx_path.stem}."
    return onnx_path.with_name(prefix + name)
