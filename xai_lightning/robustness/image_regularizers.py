"""Natural-image regularisers of Mahendran & Vedaldi (CVPR 2015, "Understanding Deep Image
Representations by Inverting Them"), for images in ``[0, 1]``.

* α-norm ``R_α(x) = mean |2x − 1|^α`` — the paper's ``‖x‖_α^α`` on the mean-centred image, scaled so
  that a valid image scores at most 1; α = 6 keeps pixel values inside the range without pulling
  them to grey.
* Total variation ``R_TV^β(x) = mean_{c,i,j} ((x_{c,i,j+1} − x_{c,i,j})² + (x_{c,i+1,j} − x_{c,i,j})²)^{β/2}``;
  β = 2 (the paper's choice for inversion) penalises high-frequency noise and spikes alike, β = 1
  is the classic TV that tolerates sharp edges.

Both return one value per example ``(B,)`` for ``x (B, C, H, W)``; means instead of sums make the
weights independent of the image size.
"""

from __future__ import annotations

import torch

__all__ = ["alpha_norm", "total_variation"]


def alpha_norm(images: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """``(B,)`` mean of ``|2x − 1|^α`` (0 for a grey image, 1 for a black/white one)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive; got {alpha}")
    return (2 * images - 1).abs().pow(alpha).flatten(1).mean(1)


def total_variation(images: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """``(B,)`` mean over channels and pixels of the squared finite differences raised to ``β/2``."""
    if images.dim() != 4:
        raise ValueError(f"Expected images (B, C, H, W); got {tuple(images.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive; got {beta}")
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    squared = dx.square() + dy.square()
    if beta == 2:
        return squared.flatten(1).mean(1)
    # A tiny offset keeps the gradient finite where the image is flat (for β < 2).
    return (squared + 1e-8).pow(beta / 2).flatten(1).mean(1)
