"""Train an image classifier on a folder of images and ship it as ONNX.

The public classes are importable from here (each on first use); heavy optional libraries
(ONNX, plotting, WandB, fvcore) are imported only inside the callbacks that use them.
"""

import os as _os
import sys as _sys

#: The console scripts (``pyproject.toml``).
_COMMANDS = ("classifier", "classifier-export", "classifier-predict")

if _sys.argv[:1] == ["-m"] and _sys.path and _sys.path[0] in ("", _os.getcwd()):
    # ``python -m classifier`` puts the current folder first on sys.path, so a ``.py`` file
    # beside a config (or a ``lightning/`` folder) would be imported ahead of the real one.
    # The ``classifier`` console script never searches the current folder; neither does this.
    del _sys.path[0]
if _os.path.basename(_sys.argv[0] if _sys.argv else "") in _COMMANDS or _sys.argv[:1] == ["-m"]:
    # An empty entry (``PYTHONPATH=$PYTHONPATH:`` with an empty PYTHONPATH) also means "the
    # current folder", whoever put files there. Only for the commands: a program importing
    # classifier keeps its own path.
    _sys.path[:] = [_p for _p in _sys.path if _p != ""]

#: Public class -> the module that defines it. Imported on first use (PEP 562), so a light entry
#: point such as ``classifier-predict`` (onnxruntime, Pillow and NumPy only) never loads torch.
_PUBLIC = {
    "EMA": "classifier.ema",
    "Calibration": "classifier.calibration",
    "ConfusionMatrix": "classifier.confusion_matrix",
    "DatasetStatistics": "classifier.dataset_statistics",
    "GradCam": "classifier.grad_cam",
    "ImageClassifier": "classifier.model",
    "ImageFolderDataModule": "classifier.datamodule",
    "LabelIssues": "classifier.label_issues",
    "ModelInfo": "classifier.model_info",
    "OnnxExport": "classifier.onnx_export",
    "PerClassReport": "classifier.metrics",
    "PredictionWriter": "classifier.prediction_writer",
    "SafeCheckpointIO": "classifier.checkpoint",
    "SampleGrids": "classifier.sample_grids",
    "SamplerDistribution": "classifier.sampler",
    "Slices": "classifier.slices",
    "TrainingHistory": "classifier.training_history",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'classifier' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


try:  # the installed distribution's version: pyproject.toml is the one place it is written
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("classifier")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
