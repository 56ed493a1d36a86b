"""``classifier-predict model.onnx images/``: predictions from an exported model alone.

Needs only onnxruntime, Pillow and NumPy (no torch, no Lightning): the preprocessing contract
(image size, resize size, interpolation, mean, std, input type, class names) is read from the
model's metadata, and the CSV has the columns of ``classifier predict``. Install on a machine
without torch with ``pip install --no-deps classifier onnxruntime pillow numpy``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifier.checked_values import (
    class_names_problem,
    preprocessing_problem,
    temperature_problem,
)
from classifier.errors import UserError, printable
from classifier.file_io import write_csv
from classifier.pil_decode import decode_pil
from classifier.predictions_format import NON_FINITE, columns
from classifier.splits import DataError, read_unlabelled

_RESAMPLING = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values


class PredictError(UserError):
    """A problem the user can fix (missing folder, not a classifier export)."""


def _contract(session: Any, model: Path) -> dict[str, Any]:
    """The JSON-valued metadata entries (others, added by tools such as onnxsim, are
    skipped), checked to be what classifier writes.

    Raises:
        PredictError: the preprocessing contract is missing or not usable.
    """
    contract: dict[str, Any] = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            contract[key] = json.loads(value)
        except ValueError:
            continue
    problem = _contract_problem(contract, session)
    if problem:
        raise PredictError(f"{model}: {problem}; not a classifier export, or a damaged one")
    return contract


def _contract_problem(contract: dict[str, Any], session: Any) -> str | None:
    """What is wrong with ``contract`` (``None``: nothing)."""
    names = contract.get("class_names")
    if not isinstance(names, list) or class_names_problem(names):
        return "its metadata has no list of distinct class names"
    uint8 = contract.get("input_dtype") == "uint8"  # normalisation is inside the graph
    found = preprocessing_problem(contract, normalised_outside=not uint8)
    if found:
        return found
    if int(contract["resize_size"]) < int(contract["image_size"]):
        return "its resize_size is smaller than its image_size"
    found = temperature_problem(contract["temperature"]) if "temperature" in contract else None
    found = found or _input_problem(contract, session)
    if found:
        return found
    outputs = session.get_outputs()
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(width, int) and width != len(names):
        return f"the model has {width} outputs for {len(names)} class names"
    return None


def _input_problem(contract: dict[str, Any], session: Any) -> str | None:
    """Whether the graph's ``images`` input takes what the metadata says it does: its type
    (``uint8`` or ``float``) and, where the graph fixes them, its channels and side."""
    inputs = {i.name: i for i in session.get_inputs()}
    if "images" not in inputs:
        return "its graph has no input named images"
    graph = inputs["images"]
    wanted = "tensor(uint8)" if contract.get("input_dtype") == "uint8" else "tensor(float)"
    if graph.type != wanted:
        return f"its metadata describes a {wanted} input, but the graph takes {graph.type}"
    size = int(contract["image_size"])
    dims = list(graph.shape or [])
    expected = [3, size, size]
    clash = len(dims) != 4 or any(
        isinstance(d, int) and d != e for d, e in zip(dims[1:], expected, strict=True)
    )
    if clash:
        return f"its image_size {size} does not fit the graph's input {dims}"
    return None


def load(path: Path, contract: dict[str, Any]) -> np.ndarray:
    """``path`` as the network's ``uint8`` CHW input, as training reads and evaluates it:
    decoded by :func:`~classifier.pil_decode.decode_pil`, the shorter side resized to
    ``resize_size`` with the contract's interpolation, then the centre crop."""
    from PIL import Image

    image = Image.fromarray(decode_pil(path))
    resize, size = int(contract["resize_size"]), int(contract["image_size"])
    width, height = image.size
    # As torchvision's Resize(int): the shorter side becomes resize_size, the longer follows.
    if width <= height:
        new = (resize, int(resize * height / width))
    else:
        new = (int(resize * width / height), resize)
    image = image.resize(new, _RESAMPLING.get(str(contract["interpolation"]), 2))
    # As torchvision's CenterCrop: offsets rounded half to even.
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _input(pixels: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    if contract.get("input_dtype") == "uint8":
        return pixels[None]
    mean = np.asarray(contract["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(contract["std"], dtype=np.float32).reshape(3, 1, 1)
    return ((pixels.astype(np.float32) / 255.0 - mean) / std)[None]


def _outputs(session: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities and, for an export with an accept/reject rule, which
    predictions it accepts (``None`` without one)."""
    names = [o.name for o in session.get_outputs()]
    accepted = None
    if "probabilities" in names:  # calibrated (temperature-scaled) softmax inside the graph
        wanted = ["probabilities"] + (["accepted"] if "accepted" in names else [])
        found = session.run(wanted, {"images": batch})
        if len(found) == 2:
            accepted = np.asarray(found[1], dtype=bool)
        return np.asarray(found[0]), accepted
    logits = np.asarray(session.run([names[0]], {"images": batch})[0], dtype=np.float64)
    exp: np.ndarray = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities, None


def predict(model: Path, folder: Path, output: Path, top_k: int = 5) -> int:
    """Write ``output`` with one row per image of ``folder``; return the number of rows."""
    import onnxruntime as ort

    if not model.is_file():
        raise PredictError(f"{model} is not a file")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    contract = _contract(session, model)
    names: list[str] = list(contract["class_names"])
    if top_k < 1:
        raise PredictError(f"--top_k must be at least 1, got {top_k}")
    try:  # the same walk and class-folder rule as `classifier predict`
        split = read_unlabelled(folder, names)
    except DataError as error:
        raise PredictError(str(error)) from None
    paths = split.paths
    _refuse_to_replace(output)
    k = min(top_k, len(names))
    truth = [names[label] if label >= 0 else "" for label in split.labels]
    rows = [
        _row(session, contract, path, names, k, true)
        for path, true in zip(paths, truth, strict=True)
    ]
    _write(output, rows, k, any(truth))
    rejected = sum(row.get("accepted") == "false" for row in rows)
    if rejected:
        print(f"{rejected} of {len(rows)} predictions not accepted (accepted column)")
    return len(rows)


def _refuse_to_replace(output: Path) -> None:
    """Refuse an ``--output`` that exists and is not a predictions CSV (the model, its
    external weights, an input image, anything else): the CSV would replace it. A link there is
    replaced itself (:func:`~classifier.file_io.write_csv`), so what it points at is safe."""
    if not os.path.lexists(output) or os.path.islink(output):
        return  # a link is replaced by the CSV, never written through
    try:
        with open(output, "rb") as handle:
            first = handle.read(64)
    except OSError:
        first = b""
    if not first.startswith(b"path,predicted,confidence,"):
        raise PredictError(
            f"--output {output} exists and is not a predictions CSV; choose another file"
        )


def _row(
    session: Any, contract: dict[str, Any], path: Path, names: Sequence[str], k: int, true: str
) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path), "true": true, "error": ""}
    try:
        pixels = load(path, contract)
    except MemoryError:  # not the file's fault: never reported as an unreadable file
        raise
    except Exception:  # any decoder failure: the row stays, marked
        row["error"] = "unreadable"
        return row
    found, accepted = _outputs(session, _input(pixels, contract))
    probs = found[0]
    if not np.isfinite(probs).all():  # never written as numbers, never a prediction
        row["error"] = NON_FINITE
        return row
    order = np.argsort(-probs)[:k]
    row["predicted"], row["confidence"] = names[order[0]], round(float(probs[order[0]]), 6)
    if accepted is not None:
        row["accepted"] = "true" if bool(accepted[0]) else "false"
    for rank, index in enumerate(order, 1):
        row[f"top{rank}_class"], row[f"top{rank}_prob"] = (
            names[index],
            round(float(probs[index]), 6),
        )
    return row


def _write(output: Path, rows: list[dict[str, Any]], k: int, has_truth: bool) -> None:
    """The CSV, written as every file is: atomically, replacing a link at ``output`` instead of
    writing through it, text cells never read as spreadsheet formulas."""
    header = columns(k, has_truth)
    write_csv(output, header, ([row.get(h, "") for h in header] for row in rows))


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; user errors print as one ``error:`` line."""
    parser = argparse.ArgumentParser(
        prog="classifier-predict",
        description="Predict a folder of images with an exported ONNX model (no torch needed).",
        allow_abbrev=False,
    )
    parser.add_argument("model", type=Path, help="the .onnx file written by classifier")
    parser.add_argument("images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="CSV file")
    parser.add_argument("--top_k", type=int, default=5, help="classes listed per image")
    args = parser.parse_args(argv)
    try:
        count = predict(args.model, args.images, args.output, args.top_k)
    except (PredictError, OSError) as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # onnxruntime refusing the file, and the like
        message = f"{args.model}: {type(error).__name__}: {error}"
        print(f"error: {printable(message)}", file=sys.stderr)
        sys.exit(1)
    print(printable(f"Wrote {count} predictions to {args.output}"))


if __name__ == "__main__":
    main()
