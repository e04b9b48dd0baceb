"""A small VGG-style CNN for 32×32 inputs: fast on a CPU, with clean layer names for hooks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xai_lightning.models.normalize import Normalize

__all__ = ["SmallCNN"]


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class SmallCNN(nn.Module):
    """Three conv stages (widths w, 2w, 4w; two 3×3 conv-BN-ReLU each; 2×2 max-pool between),
    global average pooling and a linear classifier.

    On 32×32 inputs the stages produce 32×32, 16×16 and 8×8 feature maps. Layer names:
    ``features.0`` (normalisation), then conv/BN/ReLU triples and max-pools up to
    ``features.20`` (the last conv is ``features.18``, its ReLU ``features.20``; stage ends are
    ``features.6``, ``features.13``, ``features.20``), ``pool``, ``classifier``. Every ReLU is its own module and
    not in-place, so per-module backward rules (DeepLIFT, guided backprop) can be attached.

    Args:
        in_channels: 3 for RGB, 1 for grey.
        num_classes: outputs of the classifier (logits).
        width: channels of the first stage.
        mean, std: per-channel normalisation applied inside the network (None: inputs used as is).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 5,
        width: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(mean, std) if mean is not None and std is not None else nn.Identity()]
        channels = in_channels
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            layers += _conv_block(channels, out_channels) + _conv_block(out_channels, out_channels)
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))
