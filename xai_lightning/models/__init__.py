"""Reference networks (no torchvision needed) and a LightningModule to train them."""

from xai_lightning.models.classifier import ImageClassifier
from xai_lightning.models.normalize import Normalize
from xai_lightning.models.resnet import BasicBlock, CifarResNet, resnet18, resnet20
from xai_lightning.models.sequence_classifier import PaddingMasked, SequenceClassifier
from xai_lightning.models.small_cnn import SmallCNN
from xai_lightning.models.text_classifier import TextClassifier
from xai_lightning.models.transformer_block import MultiHeadSelfAttention, TransformerBlock
from xai_lightning.models.vit import VisionTransformer

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ImageClassifier",
    "MultiHeadSelfAttention",
    "Normalize",
    "PaddingMasked",
    "SequenceClassifier",
    "SmallCNN",
    "TextClassifier",
    "TransformerBlock",
    "VisionTransformer",
    "resnet18",
    "resnet20",
]
