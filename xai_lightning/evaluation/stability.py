"""Epoch-to-epoch stability of explanations: Spearman rank correlation of paired maps."""

from __future__ import annotations

import torch

__all__ = ["average_ranks", "spearman_correlation"]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension, ties receiving their average rank (as scipy's rankdata).

    Batched: ``values`` is ``(B, N)``; ranks are ``(B, N)`` float64. One sort: a run of equal values
    occupying sorted positions ``s … e − 1`` (0-based) shares the rank ``(s + 1 + e) / 2``; each run's
    start is a running maximum of the positions where a new value begins, its end a running minimum
    (from the right) of the positions where a value ends, and the ranks are scattered back to the
    values' places. (Two ``searchsorted`` passes over the sorted values took twice as long.)
    """
    ordered, order = values.sort(dim=-1)
    count = values.shape[-1]
    if count == 0:
        return torch.zeros(values.shape, dtype=torch.float64, device=values.device)
    positions = torch.arange(count, device=values.device).expand_as(ordered)
    changes = ordered[..., 1:] != ordered[..., :-1]  # (…, N − 1): a new value begins at i + 1
    edge = torch.ones((*values.shape[:-1], 1), dtype=torch.bool, device=values.device)
    starts_here = torch.cat([edge, changes], dim=-1)
    ends_here = torch.cat([changes, edge], dim=-1)
    start = torch.where(starts_here, positions, 0).cummax(dim=-1).values
    end = torch.where(ends_here, positions + 1, count).flip(-1).cummin(dim=-1).values.flip(-1)
    average = (start + end + 1).double() / 2
    return torch.empty_like(average).scatter_(-1, order, average)


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
