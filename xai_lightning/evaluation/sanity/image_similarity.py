"""Structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004) of map pairs, batched.

The settings of scikit-image's ``structural_similarity`` defaults: a 7×7 uniform window, K1 = 0.01,
K2 = 0.03, sample covariances (N − 1), and the mean over the windows that fit inside the image
(tested against it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["structural_similarity"]


def structural_similarity(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 7, k1: float = 0.01, k2: float = 0.03
) -> torch.Tensor:
    """Mean SSIM of ``a[i]`` and ``b[i]`` (``(B, H, W)``) → ``(B,)`` float64."""
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"SSIM compares maps (B, H, W) of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if window % 2 == 0 or window > min(a.shape[1:]):
        raise ValueError(f"window must be odd and at most the map side {min(a.shape[1:])}; got {window}")
    x, y = a.double().unsqueeze(1), b.double().unsqueeze(1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1)

    count = window * window
    correction = count / (count - 1)
    mx, my = mean(x), mean(y)
    vx = correction * (mean(x * x) - mx * mx)
    vy = correction * (mean(y * y) - my * my)
    vxy = correction * (mean(x * y) - mx * my)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.flatten(1).mean(1)
