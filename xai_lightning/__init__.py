"""xai_lightning: watch a model become interpretable (or not) while it trains.

PyTorch Lightning callbacks that explain a training model every epoch — Grad-CAM and other
attributions, concept vectors, network dissection, robustness — without changing its training,
and log maps, scores and tables to Weights & Biases (offline by default), TensorBoard or files.
"""

from xai_lightning.attribution import GradCAM, grad_cam
from xai_lightning.callbacks import ExplainerNetworkCallback, GradCAMCallback, ObserverCallback, ProbeSet
from xai_lightning.core import LayerCapture, LayerNotFoundError, ObserverGuard, observe
from xai_lightning.data import ConceptWorld, ConceptWorldDataModule, DigitsDataModule
from xai_lightning.models import CifarResNet, ImageClassifier, SmallCNN

__version__ = "0.1.0"

__all__ = [
    "CifarResNet",
    "ConceptWorld",
    "ConceptWorldDataModule",
    "DigitsDataModule",
    "ExplainerNetworkCallback",
    "GradCAM",
    "GradCAMCallback",
    "ImageClassifier",
    "LayerCapture",
    "LayerNotFoundError",
    "ObserverCallback",
    "ObserverGuard",
    "ProbeSet",
    "SmallCNN",
    "grad_cam",
    "observe",
]
