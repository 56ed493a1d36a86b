"""ONNX speed in ``make bench``: onnxruntime against PyTorch eager, INT8 against fp32."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.timing import interleaved, median_time


def bench_onnx(tmp: Path) -> dict[str, float]:
    """onnxruntime vs PyTorch eager latency for resnet50 on CPU at batch 1 and 8."""
    import onnxruntime as ort
    import timm

    from classifier.export import export_onnx
    from classifier.transforms import Preprocessing

    net = timm.create_model("resnet50", pretrained=False, num_classes=10).eval()
    pre = Preprocessing.from_crop_pct(224, 0.875, "bilinear", (0.5,) * 3, (0.5,) * 3)
    path = export_onnx(net, tmp / "r50.onnx", [str(i) for i in range(10)], pre, simplify=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    result: dict[str, float] = {}
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            net(x)
            session.run(None, {"images": x.numpy()})

            def eager(x: torch.Tensor = x) -> float:
                return median_time(lambda: net(x), 1)

            def onnx(x: torch.Tensor = x) -> float:
                return median_time(lambda: session.run(None, {"images": x.numpy()}), 1)

            torch_s, onnx_s = interleaved(eager, onnx, 5)
        result[f"batch{batch}_pytorch_ms"] = torch_s * 1e3
        result[f"batch{batch}_onnxruntime_ms"] = onnx_s * 1e3
        result[f"batch{batch}_speedup"] = torch_s / onnx_s
    return result


def bench_int8(tmp: Path) -> dict[str, float]:
    """INT8 vs fp32 ONNX (resnet50, 224 px, batch 8, onnxruntime on the CPU): file size and
    latency, timed alternately. Calibrated on random inputs: speed and size do not depend on it
    (accuracy is checked on real images by the tests and the export's own verification)."""
    import numpy as np
    import onnxruntime as ort
    import timm

    from classifier.export import export_onnx, quantize_int8
    from classifier.transforms import Preprocessing

    net = timm.create_model("resnet50", pretrained=False, num_classes=10).eval()
    pre = Preprocessing.from_crop_pct(224, 0.875, "bilinear", (0.5,) * 3, (0.5,) * 3)
    fp32 = export_onnx(net, tmp / "q50.onnx", [str(i) for i in range(10)], pre)
    rng = np.random.default_rng(0)
    calibration = [rng.normal(0, 1, (8, 3, 224, 224)).astype(np.float32) for _ in range(4)]
    int8 = tmp / "q50_int8.onnx"
    quantize_int8(fp32, int8, calibration)
    x = rng.normal(0, 1, (8, 3, 224, 224)).astype(np.float32)
    sessions = [
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in (fp32, int8)
    ]
    for session in sessions:
        session.run(None, {"images": x})
    fp32_s, int8_s = interleaved(
        lambda: median_time(lambda: sessions[0].run(None, {"images": x}), 1),
        lambda: median_time(lambda: sessions[1].run(None, {"images": x}), 1),
        7,
    )
    return {
        "fp32_ms": fp32_s * 1e3,
        "int8_ms": int8_s * 1e3,
        "latency_ratio": int8_s / fp32_s,
        "size_ratio": int8.stat().st_size / fp32.stat().st_size,
    }
