"""INT8 ONNX models: ONNX Runtime's static quantisation of a verified fp32 export.

Weights are quantised per output channel to signed 8 bits and activations to unsigned 8 bits,
with ranges calibrated (min-max) on real images of the run's own data, in the QDQ format that
ONNX Runtime fuses into integer kernels when it loads the file. Weights use 7 bits of range
(``reduce_range``): the 8-bit products of CPUs without VNNI (most AVX2 machines) can overflow
their 16-bit sums otherwise. The file keeps the fp32 export's metadata (the preprocessing
contract) and says how it was quantised.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from classifier.files import atomic_write_bytes

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
