"""Train an image classifier on a folder of images and ship it as ONNX.

The public classes are importable from here; heavy optional libraries (ONNX, plotting, WandB,
fvcore) are imported only inside the callbacks that use them.
"""

import os as _os
import sys as _sys

if _sys.argv[:1] == ["-m"] and _sys.path and _sys.path[0] in ("", _os.getcwd()):
    # ``python -m classifier`` puts the current folder first on sys.path, so a ``.py`` file
    # beside a config (or a ``lightning/`` folder) would be imported ahead of the real one.
    # The ``classifier`` console script never searches the current folder; neither does this.
    del _sys.path[0]

from classifier.confusion import ConfusionMatrix
from classifier.data import ImageFolderDataModule
from classifier.dataset_stats import DatasetStatistics
from classifier.distribution import SamplerDistribution
from classifier.ema import EMA
from classifier.evaluation import PerClassReport
from classifier.export import OnnxExport
from classifier.history import TrainingHistory
from classifier.model import ImageClassifier
from classifier.model_info import ModelInfo
from classifier.predict import PredictionWriter
from classifier.samples import SampleGrids

__all__ = [
    "EMA",
    "ConfusionMatrix",
    "DatasetStatistics",
    "ImageClassifier",
    "ImageFolderDataModule",
    "ModelInfo",
    "OnnxExport",
    "PerClassReport",
    "PredictionWriter",
    "SampleGrids",
    "SamplerDistribution",
    "TrainingHistory",
]
try:  # the installed distribution's version: pyproject.toml is the one place it is written
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("classifier")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
