"""KernelSHAP over superpixels or columns (Lundberg & Lee, "A Unified Approach to Interpreting Model
Predictions", NeurIPS 2017).

Shapley values are the solution of a weighted linear regression on coalitions ``z`` with the
Shapley kernel

    π(z) = (M − 1) / (C(M, |z|) · |z| · (M − |z|)),   0 < |z| < M,

under the *efficiency* constraint ``Σ φ_i = f(x) − f(x')`` and ``φ₀ = f(x')``. Here the constraint
is exact (a Lagrange multiplier in the batched normal equations), not approximated by a huge
weight on the two end coalitions.

Coalitions: when ``2^M ≤ num_samples`` every coalition is enumerated with its kernel weight, and
the result is the exact Shapley value of the model with absent features set to the baseline.
Otherwise coalition sizes are drawn with probability ∝ (M − 1)/(|z|(M − |z|)) and members
uniformly, so each sampled coalition has weight 1 (the same estimator as Captum's ``KernelShap``).
The first two coalitions are always all-present and all-absent (they give ``f(x)`` and ``f(x')``).
"""

from __future__ import annotations

import itertools

import torch

from xai_lightning.attribution.surrogate import SurrogateMethod, _solve

__all__ = ["KernelShap", "shapley_kernel", "efficient_linear_fit"]


def shapley_kernel(sizes: torch.Tensor, num_features: torch.Tensor) -> torch.Tensor:
    """π(M, k) = (M − 1)/(C(M, k) k (M − k)) for 0 < k < M, else 0 (float64, broadcasting)."""
    k, m = sizes.double(), num_features.double()
    inner = (k > 0) & (k < m)
    log_binomial = torch.lgamma(m + 1) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
    safe_k = torch.where(inner, k, torch.ones_like(k))
    safe_rest = torch.where(inner, m - k, torch.ones_like(k))
    weight = (m - 1) / (torch.exp(log_binomial) * safe_k * safe_rest)
    return torch.where(inner, weight, torch.zeros_like(weight))


def efficient_linear_fit(
    coalitions: torch.Tensor,
    scores: torch.Tensor,
    weights: torch.Tensor,
    full_score: torch.Tensor,
    empty_score: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """Batched ``argmin Σ w (y − f(x') − zᵀφ)²`` subject to ``Σ φ = f(x) − f(x')``; ``(B, M)`` float64.

    Solved through the KKT system ``[[ZᵀWZ, 1], [1ᵀ, 0]] [φ; λ] = [ZᵀW(y − f(x')), f(x) − f(x')]``;
    padded features (``valid`` False) are pinned to 0.
    """
    z = coalitions.double() * valid.unsqueeze(1)
    w = weights.double()
    y = scores.double() - empty_score.double().unsqueeze(1)
    batch, width = valid.shape
    ones = valid.double()
    system = torch.zeros(batch, width + 1, width + 1, dtype=torch.float64, device=z.device)
    system[:, :width, :width] = z.transpose(1, 2) @ (w.unsqueeze(-1) * z)
    system[:, :width, :width] += torch.diag_embed((~valid).double())
    system[:, :width, width] = ones
    system[:, width, :width] = ones
    rhs = torch.zeros(batch, width + 1, dtype=torch.float64, device=z.device)
    rhs[:, :width] = (z.transpose(1, 2) @ (w * y).unsqueeze(-1)).squeeze(-1)
    rhs[:, width] = full_score.double() - empty_score.double()
    return _solve(system, rhs)[:, :width] * valid


class KernelShap(SurrogateMethod):
    """KernelSHAP: Shapley values of superpixels (images) or columns (tables), efficiency exact.

    Args:
        num_samples: coalitions per input including the all-present and all-absent ones
            (enumerates all ``2^M`` when that is not more).
        baseline: value of absent features (``"mean"`` per-channel image mean, ``"zero"``, a number,
            a tensor; for tables pass the training mean — SHAP's background).
        score: ``"logit"`` (default) or ``"probability"``.
        segmentation, segmentation_options: superpixels for images (see
            :mod:`~xai_lightning.attribution.superpixels`).

    Output: ``(B, H, W)`` for images, ``(B, D)`` for tables; per example the values sum to
    ``f(x) − f(x')`` exactly (up to float error).
    """

    name = "kernel_shap"
    title = "KernelSHAP"

    def __init__(self, num_samples: int = 1000, **options) -> None:
        super().__init__(num_samples=num_samples, **options)

    def _sample(self, counts, width):
        device = counts.device
        batch = counts.shape[0]
        if 2**width <= self.num_samples:
            # Exhaustive: every subset of the (padded) features; padding duplicates are harmless
            # because weights only look at real features and duplicates scale all weights alike.
            every = torch.tensor(list(itertools.product((0, 1), repeat=width)), dtype=torch.long)
            every = every[every.sum(1).argsort(stable=True)]  # empty first, full last
            ordered = torch.cat([every[-1:], every[:1], every[1:-1]])
            coalitions = ordered.to(device).unsqueeze(0).expand(batch, -1, -1).clone()
            valid = torch.arange(width, device=device).view(1, -1) < counts.view(-1, 1)
            return coalitions, self._weights(coalitions, counts, valid)
        sampled = self.num_samples - 2
        # Shared draws: a uniform per coalition for its size, a uniform per (coalition, feature) for members.
        size_draw = torch.rand(sampled, dtype=torch.float64).to(device)
        member_draw = torch.rand(sampled, width, dtype=torch.float64).to(device)
        k = torch.arange(1, max(width, 2), dtype=torch.float64, device=device).view(1, -1)  # sizes 1..M_max-1
        m = counts.double().view(-1, 1)
        density = torch.where(k < m, (m - 1) / (k * (m - k)), torch.zeros_like(k))
        cdf = density.cumsum(1) / density.sum(1, keepdim=True).clamp_min(1e-300)
        cdf[:, -1] = 1.0
        sizes = torch.searchsorted(cdf.contiguous(), size_draw.expand(batch, -1).contiguous(), right=True) + 1
        sizes = torch.minimum(sizes, counts.view(-1, 1).clamp_min(1))  # M_b = 1: only the full coalition
        # The k members are the features with the k smallest draws among the example's real features.
        keyed = member_draw.unsqueeze(0).expand(batch, -1, -1).clone()
        padding = torch.arange(width, device=device).view(1, 1, -1) >= counts.view(-1, 1, 1)
        keyed.masked_fill_(padding, float("inf"))
        rank = keyed.argsort(-1).argsort(-1)
        members = (rank < sizes.unsqueeze(-1)).long()
        ends = torch.stack([torch.ones(width, dtype=torch.long), torch.zeros(width, dtype=torch.long)]).to(device)
        coalitions = torch.cat([ends.unsqueeze(0).expand(batch, -1, -1), members], dim=1)
        weights = torch.ones(batch, self.num_samples, dtype=torch.float64, device=device)
        present = (coalitions * (~padding)).sum(-1)
        weights[(present == 0) | (present == counts.view(-1, 1))] = 0.0  # the constraint covers the ends
        return coalitions, weights

    def _weights(self, coalitions, counts, valid):
        present = (coalitions.to(valid.device) * valid.unsqueeze(1)).sum(-1)
        return shapley_kernel(present, counts.view(-1, 1))

    def _fit(self, coalitions, scores, weights, valid):
        present = (coalitions * valid.unsqueeze(1)).sum(-1)
        counts = valid.sum(1, keepdim=True)
        full = self._end_score(scores, present == counts, "all-present")
        empty = self._end_score(scores, present == 0, "all-absent")
        return efficient_linear_fit(coalitions, scores, weights, full, empty, valid), empty.double()

    @staticmethod
    def _end_score(scores: torch.Tensor, is_end: torch.Tensor, what: str) -> torch.Tensor:
        if not is_end.any(1).all():
            raise ValueError(
                f"KernelSHAP needs the {what} coalition among the coalitions of every example (it fixes the "
                "efficiency constraint); include it, e.g. as the first rows."
            )
        first = is_end.double().argmax(1)
        return scores.gather(1, first.view(-1, 1)).squeeze(1)
