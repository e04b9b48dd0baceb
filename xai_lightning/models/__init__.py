"""Reference networks (no torchvision needed) and a LightningModule to train them."""

from xai_lightning.models.classifier import ImageClassifier
from xai_lightning.models.ensemble_classifier import EnsembleClassifier
from xai_lightning.models.normalize import Normalize
from xai_lightning.models.resnet import BasicBlock, CifarResNet, resnet18, resnet20
from xai_lightning.models.small_cnn import SmallCNN
from xai_lightning.models.variational_classifier import VariationalClassifier

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "EnsembleClassifier",
    "ImageClassifier",
    "Normalize",
    "SmallCNN",
    "VariationalClassifier",
    "resnet18",
    "resnet20",
]
