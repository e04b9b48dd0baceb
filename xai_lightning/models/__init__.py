"""Reference networks (no torchvision needed) and a LightningModule to train them."""

from xai_lightning.models.classifier import ImageClassifier
from xai_lightning.models.normalize import Normalize
from xai_lightning.models.resnet import BasicBlock, CifarResNet, resnet18, resnet20
from xai_lightning.models.small_cnn import SmallCNN

__all__ = ["BasicBlock", "CifarResNet", "ImageClassifier", "Normalize", "SmallCNN", "resnet18", "resnet20"]
