"""Epoch-to-epoch stability of explanations: Spearman rank correlation of paired maps."""

from __future__ import annotations

import torch

__all__ = ["average_ranks", "spearman_correlation"]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension, ties receiving their average rank (as scipy's rankdata).

    Batched: ``values`` is ``(B, N)``; ranks are ``(B, N)`` float64. A value's average rank is
    ``(#smaller + #smaller-or-equal + 1) / 2``, both counts found with ``searchsorted``.
    """
    ordered = values.sort(dim=-1).values.contiguous()
    query = values.contiguous()
    below = torch.searchsorted(ordered, query, right=False)
    up_to = torch.searchsorted(ordered, query, right=True)
    return (below + up_to + 1).double() / 2


def spearman_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ between ``a[i]`` and ``b[i]`` (flattened), per example → ``(B,)``.

    Pearson correlation of average ranks. NaN when either map is constant (a rank correlation
    with a constant is undefined), e.g. an all-zero Grad-CAM early in training.
    """
    if a.shape != b.shape:
        raise ValueError(f"Maps to correlate differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    ra = average_ranks(a.flatten(1))
    rb = average_ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ra * rb).sum(1) / denominator
    return torch.where(denominator > 0, rho, torch.nan).float()
