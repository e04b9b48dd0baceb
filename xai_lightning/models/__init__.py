"""Reference networks (no torchvision needed) and a LightningModule to train them.

Lazy (PEP 562): the networks are plain torch; only :class:`ImageClassifier` loads Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_lightning.lazy_exports import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "BasicBlock": "xai_lightning.models.resnet",
    "CifarResNet": "xai_lightning.models.resnet",
    "ImageClassifier": "xai_lightning.models.classifier",
    "Normalize": "xai_lightning.models.normalize",
    "SmallCNN": "xai_lightning.models.small_cnn",
    "resnet18": "xai_lightning.models.resnet",
    "resnet20": "xai_lightning.models.resnet",
    **dict.fromkeys(
        (
            "PaddingMasked",
            "SequenceClassifier",
        ),
        "xai_lightning.models.sequence_classifier",
    ),
    "TextClassifier": "xai_lightning.models.text_classifier",
    **dict.fromkeys(
        (
            "MultiHeadSelfAttention",
            "TransformerBlock",
        ),
        "xai_lightning.models.transformer_block",
    ),
    "VisionTransformer": "xai_lightning.models.vit",
    "EnsembleClassifier": "xai_lightning.models.ensemble_classifier",
    "VariationalClassifier": "xai_lightning.models.variational_classifier",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from xai_lightning.models.classifier import ImageClassifier
    from xai_lightning.models.ensemble_classifier import EnsembleClassifier
    from xai_lightning.models.normalize import Normalize
    from xai_lightning.models.resnet import BasicBlock, CifarResNet, resnet18, resnet20
    from xai_lightning.models.sequence_classifier import PaddingMasked, SequenceClassifier
    from xai_lightning.models.small_cnn import SmallCNN
    from xai_lightning.models.text_classifier import TextClassifier
    from xai_lightning.models.transformer_block import MultiHeadSelfAttention, TransformerBlock
    from xai_lightning.models.variational_classifier import VariationalClassifier
    from xai_lightning.models.vit import VisionTransformer
