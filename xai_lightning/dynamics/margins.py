"""Decision-boundary margins restricted to low- and high-frequency DCT subspaces.

Ortiz-Jiménez, Modas, Moosavi-Dezfooli & Frossard, "Hold me tight! Influence of discriminative
features on deep network boundaries" (NeurIPS 2020): the margin of an input ``x`` along a
subspace ``S`` is the norm of the smallest perturbation ``δ ∈ S`` that changes the prediction.
Networks are *tight* (small margins) along directions carrying discriminative features and loose
(large margins, often none found) along the rest. The subspaces are blocks of the orthonormal
2-D DCT-II basis, applied to every channel: **low** = coefficients ``(u, v)`` with
``u, v < b`` (top-left block), **high** = ``u ≥ H − b, v ≥ W − b`` (bottom-right block), and
**full** = no restriction. Published finding on natural images (CIFAR-10, ImageNet): margins are
small in the low-frequency subspace and much larger in the high-frequency one.

The minimal perturbation is found with subspace-constrained DeepFool (Moosavi-Dezfooli et al.
2016), batched: at ``x₀ + r``, for the ``candidates − 1`` runner-up classes ``k`` of the clean
prediction ``p`` (by clean logit), ``w_k = P ∇ₓ(f_k − f_p)`` (``P`` the orthogonal projection onto
``S``) and ``r ← r + |f_k − f_p| / ‖w_k‖² · w_k`` for the ``k`` with the smallest linearised
distance ``|f_k − f_p| / ‖w_k‖``, until ``x₀ + (1 + overshoot)·r`` is classified differently.
Then ``refine_steps`` steps of regula falsi on ``g(t) = f_p − max_{j≠p} f_j`` along ``x₀ + t·r``,
``t ∈ [0, 1 + overshoot]``, locate the boundary crossing; the **margin** is ``t*·‖r‖`` with ``t*``
the linear interpolation of the final bracket. On an affine classifier with ``candidates`` = all
classes, the first DeepFool step lands on the boundary, so the margin is the exact distance
``|f_k − f_p| / ‖P(w_k − w_p)‖`` within the subspace (tested). Pixels are not clipped to
``[0, 1]``: the margin is a distance in input space, as in the paper.

Examples that are still unflipped after ``max_iter`` steps, or whose projected gradient vanishes,
get margin NaN (no boundary found in the subspace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.core import batch_slices, observe, select_logits

__all__ = ["DCTSubspace", "MarginResult", "Subspace", "dct_matrix", "subspace_margins"]

Subspace = Literal["low", "high", "full"]


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C (n, n)``: ``C[u, i] = α(u)·cos(π(2i + 1)u / 2n)``; ``C Cᵀ = I``."""
    u = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    matrix = torch.cos(math.pi * (2 * i + 1) * u / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(dtype=dtype, device=device)


class DCTSubspace:
    """Orthogonal projection onto a block of 2-D DCT coefficients, channel by channel.

    Args:
        height, width: image size.
        kind: ``"low"`` (``u, v < block``), ``"high"`` (``u ≥ H − block, v ≥ W − block``) or
            ``"full"`` (identity).
        block: side ``b`` of the block; at most half the shorter side, so low and high never overlap.
    """

    def __init__(self, height: int, width: int, kind: Subspace, block: int) -> None:
        if kind not in ("low", "high", "full"):
            raise ValueError(f"subspace must be 'low', 'high' or 'full'; got {kind!r}")
        largest = min(height, width) // 2
        if not 1 <= block <= largest:
            raise ValueError(
                f"DCT block {block} does not fit {height}×{width} images: use 1..{largest} (half the shorter side, "
                "so that the low and high blocks do not overlap)."
            )
        self.height, self.width, self.kind, self.block = height, width, kind, block
        mask = torch.zeros(height, width, dtype=torch.bool)
        if kind == "low":
            mask[:block, :block] = True
        elif kind == "high":
            mask[height - block :, width - block :] = True
        else:
            mask[:] = True
        self.mask = mask

    @property
    def dimension_per_channel(self) -> int:
        return int(self.mask.sum())

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``P v`` for ``v (..., H, W)``: DCT, keep the block, inverse DCT (same dtype and device)."""
        if self.kind == "full":
            return v
        ch = dct_matrix(self.height, v.dtype, v.device)
        cw = dct_matrix(self.width, v.dtype, v.device)
        coefficients = ch @ v @ cw.T
        return ch.T @ (coefficients * self.mask.to(v.device)) @ cw


@dataclass(frozen=True)
class MarginResult:
    """Margins of ``B`` inputs in one subspace.

    Attributes:
        margin: ``(B,)`` estimated distance to the decision boundary along the subspace (NaN: none
            found within ``max_iter`` DeepFool steps).
        upper: ``(B,)`` norm of the smallest perturbation verified to change the prediction (≥ margin).
        predictions: ``(B,)`` clean predicted classes.
        iterations: ``(B,)`` DeepFool steps taken.
    """

    margin: torch.Tensor
    upper: torch.Tensor
    predictions: torch.Tensor
    iterations: torch.Tensor


def _decision_gap(logits: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """``f_p − max_{j≠p} f_j`` per row: > 0 while the prediction is still ``p``."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    own = logits[rows, predicted]
    others = logits.clone()
    others[rows, predicted] = -torch.inf
    return own - others.max(1).values


def subspace_margins(
    model: nn.Module,
    images: torch.Tensor,
    subspace: DCTSubspace,
    *,
    candidates: int = 2,
    max_iter: int = 10,
    overshoot: float = 0.02,
    refine_steps: int = 1,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    trainer: Any | None = None,
) -> MarginResult:
    """Minimal-perturbation margins of ``images (B, C, H, W)`` within ``subspace`` (see the module docstring).

    Runs inside :func:`~xai_lightning.core.observe` (eval mode, isolated RNG, gradients by
    ``torch.autograd.grad`` with respect to the input only). ``candidates`` counts the clean
    prediction too: 2 = the runner-up class only (one backward pass per step), the number of
    classes = exact DeepFool.
    """
    if candidates < 2:
        raise ValueError(f"candidates must be >= 2 (the prediction and at least one other class); got {candidates}")
    if max_iter < 1 or refine_steps < 0 or overshoot <= 0:
        raise ValueError("max_iter must be >= 1, refine_steps >= 0 and overshoot > 0")
    if tuple(images.shape[-2:]) != (subspace.height, subspace.width):
        raise ValueError(f"The subspace is for {subspace.height}×{subspace.width} images; got {tuple(images.shape)}")
    results = []
    with observe(model, trainer=trainer) as guard:
        clean = guard.input(images, requires_grad=False)
        for rows in batch_slices(clean.shape[0], max_batch):
            results.append(
                _margins_of_slice(
                    model, clean[rows], subspace, candidates, max_iter, overshoot, refine_steps, output_key
                )
            )
    return MarginResult(*(torch.cat([r[i] for r in results]) for i in range(4)))


def _logits(model: nn.Module, x: torch.Tensor, output_key: str | int | None) -> torch.Tensor:
    return select_logits(model(x), output_key)


def _margins_of_slice(
    model: nn.Module,
    x0: torch.Tensor,
    subspace: DCTSubspace,
    candidates: int,
    max_iter: int,
    overshoot: float,
    refine_steps: int,
    output_key: str | int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = x0.shape[0]
    device = x0.device
    total = torch.zeros_like(x0)
    iterations = torch.zeros(batch, dtype=torch.long, device=device)
    found = torch.zeros(batch, dtype=torch.bool, device=device)
    high_gap = torch.zeros(batch, dtype=torch.float64, device=device)  # gap at x0 + (1 + overshoot)·r
    active = torch.arange(batch, device=device)
    # The first step's forward pass is at x0: it also gives the clean prediction (no separate pass).
    x = x0.detach().clone().requires_grad_(True)
    logits = _logits(model, x, output_key)
    clean_logits = logits.detach().float()
    predicted = clean_logits.argmax(1)
    count = min(candidates, clean_logits.shape[1])
    others = clean_logits.argsort(1, descending=True)[:, 1:count]  # runner-up classes by clean logit
    for iteration in range(max_iter):
        if iteration:
            if active.numel() == 0:
                break
            x = (x0[active] + total[active]).detach().requires_grad_(True)
            logits = _logits(model, x, output_key)
        rows = torch.arange(active.numel(), device=device)
        p = predicted[active]
        best_distance = torch.full((active.numel(),), torch.inf, device=device)
        best_step = torch.zeros_like(x)
        for j in range(others.shape[1]):
            k = others[active, j]
            difference = logits[rows, k] - logits[rows, p]  # < 0 while p wins against k
            (gradient,) = torch.autograd.grad(difference.sum(), x, retain_graph=j + 1 < others.shape[1])
            w = subspace.project(gradient.detach().float()).to(x.dtype)
            norm = w.flatten(1).norm(dim=1)
            distance = difference.detach().abs() / norm
            better = (distance < best_distance) & (norm > 0)
            step = (difference.detach().abs() / norm.square().clamp_min(1e-30)).view(-1, 1, 1, 1) * w
            best_step = torch.where(better.view(-1, 1, 1, 1), step, best_step)
            best_distance = torch.where(better, distance, best_distance)
        stuck = ~torch.isfinite(best_distance)
        # Under a float64 or bfloat16 model the logits, hence the step, need not be in the images' dtype.
        total[active] = total[active] + best_step.detach().to(total.dtype)
        iterations[active] += 1
        with torch.no_grad():
            gap = _decision_gap(_logits(model, x0[active] + (1 + overshoot) * total[active], output_key).float(), p)
        flipped = (gap <= 0) & ~stuck
        found[active[flipped]] = True
        high_gap[active[flipped]] = gap[flipped].double()
        active = active[~flipped & ~stuck]

    # Regula falsi along the ray x0 + t·r, t ∈ [0, 1 + overshoot], for the examples that flipped only.
    length = total.double().flatten(1).norm(dim=1)
    margin = torch.full_like(length, torch.nan)
    upper = torch.full_like(length, torch.nan)
    rows = torch.nonzero(found).flatten()
    if rows.numel():
        low_t = torch.zeros(rows.numel(), dtype=torch.float64, device=device)
        high_t = torch.full_like(low_t, 1.0 + overshoot)
        low_gap = _decision_gap(clean_logits[rows], predicted[rows]).double()
        bracket_gap = high_gap[rows]
        with torch.no_grad():
            for _ in range(refine_steps):
                t = _interpolate(low_t, high_t, low_gap, bracket_gap)
                point = x0[rows] + t.to(x0.dtype).view(-1, 1, 1, 1) * total[rows]
                gap = _decision_gap(_logits(model, point, output_key).float(), predicted[rows]).double()
                crossed = gap <= 0
                high_t, bracket_gap = torch.where(crossed, t, high_t), torch.where(crossed, gap, bracket_gap)
                low_t, low_gap = torch.where(crossed, low_t, t), torch.where(crossed, low_gap, gap)
        margin[rows] = _interpolate(low_t, high_t, low_gap, bracket_gap) * length[rows]
        upper[rows] = high_t * length[rows]
    return margin.float(), upper.float(), predicted, iterations


def _interpolate(
    low_t: torch.Tensor, high_t: torch.Tensor, low_gap: torch.Tensor, high_gap: torch.Tensor
) -> torch.Tensor:
    """Zero of the line through ``(low_t, low_gap > 0)`` and ``(high_t, high_gap ≤ 0)``, kept inside the bracket."""
    span = (low_gap - high_gap).clamp_min(1e-300)
    t = low_t + low_gap.clamp_min(0) / span * (high_t - low_t)
    return torch.minimum(torch.maximum(t, low_t), high_t)
