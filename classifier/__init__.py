"""Train an image classifier on a folder of images and ship it as ONNX.

The public classes are importable from here; heavy optional libraries (ONNX, plotting, WandB)
are imported only inside the callbacks that use them.
"""

from classifier.data import ImageFolderDataModule
from classifier.model import ImageClassifier
from classifier.predict import PredictionWriter

__all__ = ["ImageClassifier", "ImageFolderDataModule", "PredictionWriter"]
__version__ = "0.1.0"
