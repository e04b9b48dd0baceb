"""The decorrelated Fourier image parameterisation of feature visualisation.

Olah et al. (Distill 2017, "Feature Visualization") and Mordvintsev et al. (Distill 2018,
"Differentiable Image Parameterizations") optimise an image not pixel by pixel but through

1. *spatial decorrelation*: the parameters are the image's 2-D Fourier coefficients, scaled by
   ``1/f^decay`` (``f`` the spatial frequency, ``decay = 1``) so that gradient steps have the
   spectrum of natural images instead of white noise;
2. *colour decorrelation*: the inverse FFT gives three decorrelated channels, which a fixed 3×3
   matrix — the square root of the data's colour covariance — maps to RGB;
3. a sigmoid that maps the result into the ``[0, 1]`` box.

The colour matrix defaults to the ImageNet estimate published with Lucid; pass
:func:`colour_correlation_sqrt` of your own images for a data-specific one.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FourierImage", "IMAGENET_COLOUR_SQRT", "colour_correlation_sqrt"]

#: Square root of ImageNet's RGB covariance (columns: decorrelated channels), from Lucid.
IMAGENET_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def colour_correlation_sqrt(images: torch.Tensor) -> torch.Tensor:
    """``U·√S`` of the SVD of the pixels' RGB covariance, ``(3, 3)``, from images ``(N, 3, H, W)``.

    Multiplying decorrelated, unit-variance channels by it gives colours with the data's covariance.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"Colour statistics need RGB images (N, 3, H, W); got {tuple(images.shape)}")
    pixels = images.detach().double().permute(1, 0, 2, 3).reshape(3, -1)
    covariance = torch.cov(pixels)
    u, s, _ = torch.linalg.svd(covariance)
    return (u * s.clamp_min(0).sqrt()).float()


def _frequencies(height: int, width: int) -> torch.Tensor:
    """``(H, W//2 + 1)`` radial spatial frequency of each rFFT coefficient (cycles per pixel)."""
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    return (fy.square() + fx.square()).sqrt()


class FourierImage(nn.Module):
    """``B`` images parameterised by scaled Fourier coefficients and decorrelated colours.

    Args:
        batch, channels, height, width: the images' shape.
        decay_power: exponent of the ``1/f`` scaling of the spectrum.
        colour_sqrt: ``(C, C)`` colour matrix (default :data:`IMAGENET_COLOUR_SQRT` for 3 channels,
            the identity otherwise); normalised so that its largest column has unit norm.
        init_std: standard deviation of the initial coefficients (small: the start is a grey image).
        generator: draws the initial coefficients.

    ``forward()`` returns ``(B, C, H, W)`` in ``(0, 1)``.
    """

    # Buffers registered in ``__init__`` (declared here for type checkers).
    scale: torch.Tensor
    colour: torch.Tensor

    def __init__(
        self,
        batch: int,
        channels: int = 3,
        height: int = 32,
        width: int = 32,
        *,
        decay_power: float = 1.0,
        colour_sqrt: torch.Tensor | None = None,
        init_std: float = 0.01,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.size = (height, width)
        frequencies = _frequencies(height, width).clamp_min(1.0 / max(height, width))
        self.register_buffer("scale", frequencies.pow(-decay_power).to(device))
        spectrum = torch.randn((batch, channels, height, width // 2 + 1, 2), generator=generator) * init_std
        self.spectrum = nn.Parameter(spectrum.to(device))
        if colour_sqrt is None:
            colour_sqrt = IMAGENET_COLOUR_SQRT if channels == 3 else torch.eye(channels)
        if colour_sqrt.shape != (channels, channels):
            raise ValueError(f"colour_sqrt must be ({channels}, {channels}); got {tuple(colour_sqrt.shape)}")
        colour = colour_sqrt.float() / colour_sqrt.float().norm(dim=0).max().clamp_min(1e-12)
        self.register_buffer("colour", colour.to(device))

    def forward(self) -> torch.Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        # "ortho" keeps the image's scale independent of its size; the 1/4 of Lucid keeps the
        # sigmoid out of saturation at the start.
        decorrelated = torch.fft.irfft2(coefficients, s=self.size, norm="ortho") / 4
        coloured = torch.einsum("cd,bdhw->bchw", self.colour, decorrelated)
        return torch.sigmoid(coloured)
