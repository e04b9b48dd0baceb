"""LIME over superpixels or columns (Ribeiro, Singh & Guestrin, "Why Should I Trust You?", KDD 2016).

For each input: ``num_samples`` coalitions of interpretable features (the first keeps every
feature — the input itself — the rest keep each feature independently with probability 1/2),
absent features filled with the baseline (default: the image's per-channel mean, the "grey" of
lime's ``hide_color``), weighted by the exponential kernel ``exp(−d²/σ²)`` of the cosine distance
``d`` between the coalition and the all-present vector (σ = 0.25, lime's width for images), and a
weighted ridge regression (α = 1, lime's ``Ridge``) of the class score on the coalitions.
``top_k`` keeps lime's "top-K features": the ``K`` largest ``|φ|`` of the full fit are refitted alone.

The coefficients are the explanation; see :class:`~xai_lightning.attribution.surrogate.SurrogateMethod`
for shapes and :meth:`explain` for the full fit.
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.surrogate import SurrogateMethod, weighted_ridge

__all__ = ["Lime", "lime_kernel"]


def lime_kernel(coalitions: torch.Tensor, valid: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """``exp(−d²/σ²)`` with ``d`` the cosine distance of each coalition to all-ones; ``(B, N)``.

    An empty coalition has no direction; like scikit-learn's ``cosine_distances`` it gets ``d = 1``.
    """
    present = (coalitions * valid.unsqueeze(1)).double().sum(-1)
    total = valid.double().sum(-1, keepdim=True)
    # cos(z, 1) = (z·1) / (|z| |1|) = k / (sqrt(k) sqrt(M)) = sqrt(k / M) for a binary z with k ones
    distance = torch.where(present > 0, 1 - torch.sqrt(present / total), torch.ones_like(present))
    return torch.exp(-(distance**2) / kernel_width**2)


class Lime(SurrogateMethod):
    """LIME: weighted ridge surrogate over superpixels (images) or columns (tables).

    Args:
        num_samples: coalitions per input, the input itself included (lime: 1000).
        kernel_width: σ of the exponential kernel on cosine distance (lime for images: 0.25).
        alpha: ridge penalty (lime: 1.0; 0 gives weighted least squares).
        top_k: refit on the ``top_k`` features of largest ``|φ|`` (None: keep all).
        baseline: fill of absent features (``"mean"`` per-channel image mean, ``"zero"``, a number,
            a tensor — :mod:`~xai_lightning.attribution.baselines`; for tables pass the training mean).
        score: ``"logit"`` (default) or ``"probability"`` of the target class.
        segmentation: ``"quickshift"`` (lime's), ``"slic"``, ``"felzenszwalb"`` or ``"grid"``;
            ``segmentation_options`` go to scikit-image.

    Output: ``(B, H, W)`` for images, ``(B, D)`` for tables (each element: its feature's φ).
    """

    name = "lime"
    title = "LIME"

    def __init__(
        self,
        num_samples: int = 1000,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        top_k: int | None = None,
        **options,
    ) -> None:
        super().__init__(num_samples=num_samples, **options)
        if kernel_width <= 0:
            raise ValueError(f"kernel_width must be > 0; got {kernel_width}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0; got {alpha}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None; got {top_k}")
        self.kernel_width = kernel_width
        self.alpha = alpha
        self.top_k = top_k

    def _sample(self, counts, width):
        # One draw shared by the batch: an example's coalitions depend only on its feature count.
        draws = (torch.rand(self.num_samples - 1, width) < 0.5).long()
        coalitions = torch.cat([torch.ones(1, width, dtype=torch.long), draws]).to(counts.device)
        coalitions = coalitions.unsqueeze(0).expand(counts.shape[0], -1, -1).clone()
        valid = torch.arange(width, device=counts.device).view(1, -1) < counts.view(-1, 1)
        return coalitions, self._weights(coalitions, counts, valid)

    def _weights(self, coalitions, counts, valid):
        return lime_kernel(coalitions.to(valid.device), valid, self.kernel_width)

    def _fit(self, coalitions, scores, weights, valid):
        coefficients, intercept = weighted_ridge(coalitions, scores, weights, self.alpha, valid)
        if self.top_k is not None and self.top_k < valid.shape[1]:
            magnitude = coefficients.abs().masked_fill(~valid, -1.0)
            keep = torch.zeros_like(valid)
            keep.scatter_(1, magnitude.topk(self.top_k, dim=1).indices, True)
            coefficients, intercept = weighted_ridge(coalitions, scores, weights, self.alpha, keep & valid)
        return coefficients, intercept
