"""CIFAR-style residual networks (He et al., CVPR 2016), written here because torchvision does not
import with the CPU torch build this project targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xai_lightning.models.normalize import Normalize

__all__ = ["BasicBlock", "CifarResNet", "resnet18", "resnet20"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv) shortcut.

    Each ReLU is a separate, not-in-place module (``relu1``, ``relu2``) so that per-module
    backward rules see every nonlinearity exactly once; the residual sum is a plain ``+``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3×3 stem (no max-pool), stages ``layer1`` … ``layerN``, GAP, linear.

    Args:
        blocks: number of BasicBlocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        widths: channels per stage; stage i > 0 halves the resolution.
        in_channels, num_classes, mean, std: as :class:`~xai_lightning.models.SmallCNN`.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"blocks and widths need one entry per stage; got {list(blocks)} and {list(widths)}")
        self.normalize: nn.Module = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        channels = widths[0]
        for index, (count, width) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if index == 1 else 2
            stage = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            channels = width
        self.num_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.pool(x).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-20 of He et al. (0.27 M parameters): 3 stages × 3 blocks, widths 16/32/64."""
    return CifarResNet((3, 3, 3), (16, 32, 64), in_channels=in_channels, num_classes=num_classes, **kwargs)


def resnet18(num_classes: int = 10, in_channels: int = 3, **kwargs) -> CifarResNet:
    """The CIFAR variant of ResNet-18 (11 M parameters): 4 stages × 2 blocks, widths 64…512."""
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels=in_channels, num_classes=num_classes, **kwargs)
