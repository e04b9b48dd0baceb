"""Noisy linear imputation (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022): fill removed pixels from their neighbours.

Each removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct,
1/12 for the 4 diagonal ones; neighbours outside the image drop out of the mean), where
neighbours that are themselves removed enter as unknowns. That is one sparse linear system per
image and channel,

    s_i·v_i − Σ_{j removed} w_ij v_j = Σ_{j kept} w_ij x_j        (s_i = Σ_{j in the image} w_ij),

whose matrix is symmetric and, wherever a removed region touches a kept pixel, positive
definite. The ROAD authors (and Quantus) solve it with a sparse direct solver image by image; here
every image, channel and removal pattern of a batch is solved at once by conjugate gradients in
float64, with the 3×3 neighbour sum as a convolution. A removed region with no kept neighbour
(everything removed) has no information and is filled with 0. Then Gaussian noise of standard
deviation ``noise`` is added to the imputed pixels, so that the removal pattern itself carries
no signal a model could read (the authors' point against mean-filling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NEIGHBOUR_WEIGHTS", "noisy_linear_imputation"]

#: 3×3 weights of the neighbours in the mean (the centre does not count).
NEIGHBOUR_WEIGHTS = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64
)


def _neighbour_sum(values: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij values_j over the in-image neighbours of every pixel; ``values`` is ``(N, 1, H, W)``."""
    return F.conv2d(values, kernel, padding=1)


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    noise_draws: torch.Tensor | None = None,
    tolerance: float = 1e-10,
    max_iterations: int | None = None,
) -> torch.Tensor:
    """Images ``(N, C, H, W)`` with the pixels of ``removed`` ``(N, H, W)`` imputed (all channels).

    Args:
        noise: standard deviation of the Gaussian noise added to imputed pixels (ROAD: 0.01).
        generator: source of the noise (a fresh CPU generator seeded 0 when None).
        noise_draws: standard-normal draws ``(N, C, H, W)`` to use instead of the generator's.
        tolerance: conjugate gradients stop when every system's residual norm is below
            ``tolerance`` times its right-hand side's.
        max_iterations: cap on the iterations (default ``4·(H + W) + 50``, ample for these systems).
    """
    if images.dim() != 4 or removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"Imputation takes images (N, C, H, W) and removed-pixel masks (N, H, W); got {tuple(images.shape)} "
            f"and {tuple(removed.shape)}"
        )
    batch, channels, height, width = images.shape
    device = images.device
    kernel = NEIGHBOUR_WEIGHTS.to(device).view(1, 1, 3, 3)
    x = images.detach().double().reshape(batch * channels, 1, height, width)
    unknown = removed.to(device).double().unsqueeze(1).repeat_interleave(channels, dim=0)  # (N·C, 1, H, W)
    kept = 1.0 - unknown
    weight_sum = _neighbour_sum(torch.ones(1, 1, height, width, dtype=torch.float64, device=device), kernel)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return unknown * (weight_sum * v - _neighbour_sum(v * unknown, kernel))

    rhs = unknown * _neighbour_sum(x * kept, kernel)
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rr = residual.square().sum((1, 2, 3))
    limit = (tolerance * rhs.square().sum((1, 2, 3)).sqrt()).square()
    for _ in range(max_iterations if max_iterations is not None else 4 * (height + width) + 50):
        active = rr > limit
        if not bool(active.any()):
            break
        applied = apply(direction)
        curvature = (direction * applied).sum((1, 2, 3))
        step = torch.where(active & (curvature > 0), rr / curvature.clamp_min(1e-300), 0.0).view(-1, 1, 1, 1)
        solution = solution + step * direction
        residual = residual - step * applied
        rr_new = residual.square().sum((1, 2, 3))
        ratio = torch.where(rr > 0, rr_new / rr.clamp_min(1e-300), 0.0).view(-1, 1, 1, 1)
        direction = residual + ratio * direction
        rr = rr_new
    filled = x * kept + solution * unknown
    if noise > 0:
        if noise_draws is None:
            generator = generator if generator is not None else torch.Generator().manual_seed(0)
            draws = torch.randn(filled.shape, generator=generator, dtype=torch.float64).to(device)
        else:
            draws = noise_draws.to(device, torch.float64).reshape(filled.shape)
        filled = filled + noise * draws * unknown
    return filled.view(batch, channels, height, width).to(images.dtype)
