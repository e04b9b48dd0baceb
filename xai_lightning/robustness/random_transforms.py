"""Transformation robustness for feature visualisation: random jitter, scale and rotation.

Olah, Mordvintsev & Schubert (Distill 2017, "Feature Visualization") optimise an image so that it
excites a unit *under small random transformations* — otherwise the optimiser finds
high-frequency patterns that only work at one exact alignment. Lucid's standard set pads the
image, jitters it by a few pixels, scales by up to ±5 % and rotates by up to ±10°. Here the three
are composed into one affine map per image and step and applied with a single bilinear
``grid_sample`` over the whole batch; uncovered borders are filled with grey (0.5), like Lucid's
constant padding. The defaults are Lucid's, scaled to 32×32 images: jitter of 2 px, scale in
[0.95, 1.05], rotation in [−10°, 10°].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_affine"]

#: Value that fills pixels moved in from outside the image.
FILL = 0.5


def random_affine(
    images: torch.Tensor,
    *,
    jitter: float = 2.0,
    scale: tuple[float, float] = (0.95, 1.05),
    degrees: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply an independent random jitter/scale/rotation to each image of ``(B, C, H, W)``.

    Args:
        jitter: maximal translation in pixels (uniform in ``[−jitter, jitter]`` per axis).
        scale: range of the uniform zoom factor.
        degrees: maximal rotation angle (uniform in ``[−degrees, degrees]``).
        generator: draws the parameters (None: the global generator).

    Differentiable with respect to ``images``.
    """
    batch, _, height, width = images.shape
    device = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device, dtype=torch.float32)

    angle = uniform(-degrees, degrees) * (math.pi / 180)
    zoom = uniform(*scale)
    # grid_sample coordinates span [-1, 1]: one pixel is 2/size.
    shift_x = uniform(-jitter, jitter) * (2 / width)
    shift_y = uniform(-jitter, jitter) * (2 / height)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1).to(
        images.dtype
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sampling (x - fill) with zero padding and adding fill back pads with the fill value.
    return F.grid_sample(images - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL
