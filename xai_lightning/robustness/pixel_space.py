"""Pixel space: attacks and image synthesis happen on images in ``[0, 1]``.

The threat model of Madry et al. (2018) bounds perturbations of *pixels*: ε = 8/255 means eight
grey levels, and the adversarial image must stay a valid image (the ``[0, 1]`` box). That only
holds when the model receives ``[0, 1]`` images and normalises them itself (our models'
``Normalize`` first layer). Data pipelines that normalise in the loader instead must *declare*
that normalisation, so that the attack can convert the batch to pixels, attack there, and convert
back. :class:`PixelSpace` does these conversions and refuses inputs that are not pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xai_lightning.models.normalize import Normalize

__all__ = ["PixelSpace", "PixelRangeError"]

#: Slack for float noise when checking that inputs lie in [0, 1].
RANGE_TOLERANCE = 1e-4


class PixelRangeError(ValueError):
    """Inputs outside ``[0, 1]`` (after undoing a declared normalisation)."""


class PixelSpace:
    """Conversion between the inputs a loader delivers and ``[0, 1]`` pixels.

    Args:
        mean, std: the per-channel normalisation the *data loader* applies, ``x = (p - mean) / std``
            (None: the loader delivers pixels already, and the model normalises internally).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("Declare the data normalisation with both data_mean and data_std (or neither).")
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        if mean is not None and std is not None:
            self.mean = [float(m) for m in mean]
            self.std = [float(s) for s in std]
            # Normalize validates lengths and positive std with clear messages.
            Normalize(self.mean, self.std)

    @property
    def declared(self) -> bool:
        return self.mean is not None

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        if mean.shape[1] != x.shape[1]:
            raise ValueError(
                f"The declared normalisation has {mean.shape[1]} channels but the inputs {tuple(x.shape)} have "
                f"{x.shape[1]}; give one data_mean/data_std value per channel."
            )
        return mean, std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Loader inputs → ``[0, 1]`` pixels (identity without a declared normalisation)."""
        if not self.declared:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` pixels → what the loader delivers (and the model expects)."""
        if not self.declared:
            return pixels
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def wrap(self, model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
        """A module taking pixels: ``model`` itself, or ``Sequential(Normalize(mean, std), model)``."""
        if not self.declared:
            return model
        assert self.mean is not None and self.std is not None  # declared: both are set together
        return nn.Sequential(Normalize(self.mean, self.std).to(device), model)

    def check(self, inputs: torch.Tensor, who: str) -> None:
        """Raise :class:`PixelRangeError` naming the fix unless ``inputs`` are (or map to) ``[0, 1]`` pixels."""
        if not inputs.is_floating_point():
            raise PixelRangeError(
                f"{who} attacks float images in [0, 1]; got inputs of dtype {inputs.dtype}. Convert the images "
                "to float in [0, 1] (e.g. uint8 / 255) in the dataset."
            )
        pixels = self.to_pixels(inputs.detach())
        low, high = torch.stack(torch.aminmax(pixels)).tolist()  # one synchronisation, not two
        if low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
            return
        if self.declared:
            raise PixelRangeError(
                f"{who}: after undoing the declared normalisation (data_mean={self.mean}, data_std={self.std}) the "
                f"inputs range over [{low:.3g}, {high:.3g}], not [0, 1]. Check that data_mean/data_std are the "
                "values the data loader normalises with."
            )
        raise PixelRangeError(
            f"{who} attacks in [0, 1] pixel space (eps is measured in pixels), but the inputs range over "
            f"[{low:.3g}, {high:.3g}]. Either feed [0, 1] images and normalise inside the model (e.g. "
            "SmallCNN(mean=..., std=...) or nn.Sequential(xai_lightning.models.Normalize(mean, std), network)), "
            "or declare the loader's normalisation: data_mean=[...], data_std=[...]."
        )
