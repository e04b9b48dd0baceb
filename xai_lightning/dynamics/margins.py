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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.core import observe, select_logits
from xai_lightning.core.fast_forward import FastForward, pass_slices

__all__ = ["DCTSubspace", "MarginResult", "Subspace", "dct_matrix", "margins_in_subspaces", "subspace_margins"]

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
        # The DCT matrices and mask per (dtype, device): projections run several times per DeepFool step.
        self._operators: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def dimension_per_channel(self) -> int:
        return int(self.mask.sum())

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``P v`` for ``v (..., H, W)``: DCT, keep the block, inverse DCT (same dtype and device)."""
        if self.kind == "full":
            return v
        key = (v.dtype, v.device)
        if key not in self._operators:
            self._operators[key] = (
                dct_matrix(self.height, v.dtype, v.device),
                dct_matrix(self.width, v.dtype, v.device),
                self.mask.to(v.device),
            )
        ch, cw, mask = self._operators[key]
        coefficients = ch @ v @ cw.T
        return ch.T @ (coefficients * mask) @ cw


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
    classes = exact DeepFool. ``max_batch`` caps the images per forward/backward pass (on a CPU
    passes take at most :data:`~xai_lightning.core.fast_forward.CPU_INPUT_ELEMENTS_PER_PASS`
    input elements anyway). :func:`margins_in_subspaces` measures several subspaces at once.
    """
    (result,) = margins_in_subspaces(
        model,
        images,
        [subspace],
        candidates=candidates,
        max_iter=max_iter,
        overshoot=overshoot,
        refine_steps=refine_steps,
        max_batch=max_batch,
        output_key=output_key,
        trainer=trainer,
    )
    return result


def margins_in_subspaces(
    model: nn.Module,
    images: torch.Tensor,
    subspaces: Sequence[DCTSubspace],
    *,
    candidates: int = 2,
    max_iter: int = 10,
    overshoot: float = 0.02,
    refine_steps: int = 1,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    trainer: Any | None = None,
) -> list[MarginResult]:
    """:func:`subspace_margins` of ``images`` in each of ``subspaces``, in shared passes.

    Every subspace's DeepFool starts at the clean images, so the first step's forward and backward
    passes (which also give the clean predictions) serve all subspaces; later steps, flip checks
    and refinement steps of all subspaces go through the model together. The numbers are those of
    separate :func:`subspace_margins` calls up to float reassociation. Forward passes run through
    :class:`~xai_lightning.core.fast_forward.FastForward` (channels-last on a CPU, eval
    BatchNorms folded), at most ``max_batch`` images each (on a CPU at most
    :data:`~xai_lightning.core.fast_forward.CPU_INPUT_ELEMENTS_PER_PASS` input elements).
    """
    if candidates < 2:
        raise ValueError(f"candidates must be >= 2 (the prediction and at least one other class); got {candidates}")
    if max_iter < 1 or refine_steps < 0 or overshoot <= 0:
        raise ValueError("max_iter must be >= 1, refine_steps >= 0 and overshoot > 0")
    if not subspaces:
        raise ValueError("At least one subspace is needed.")
    for subspace in subspaces:
        if tuple(images.shape[-2:]) != (subspace.height, subspace.width):
            raise ValueError(
                f"The subspace is for {subspace.height}×{subspace.width} images; got {tuple(images.shape)}"
            )
    with observe(model, trainer=trainer) as guard:
        clean = guard.input(images, requires_grad=False)
        passes = _Passes(FastForward(model, lambda x: select_logits(model(x), output_key)), max_batch)
        return _margins(passes, clean, list(subspaces), candidates, max_iter, overshoot, refine_steps)


class _Passes:
    """The model's passes for DeepFool, in slices of :func:`~xai_lightning.core.fast_forward.pass_slices`."""

    def __init__(self, forward: FastForward, max_batch: int | None) -> None:
        self.forward = forward
        self.max_batch = max_batch

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, K)`` logits of ``x``, no gradients."""
        with torch.no_grad():
            return torch.cat([self.forward(x[rows]) for rows in pass_slices(x, self.max_batch)])

    def gradients(
        self,
        x: torch.Tensor,
        predicted: torch.Tensor | None = None,
        others: torch.Tensor | None = None,
        candidates: int = 2,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(n, K)`` at ``x`` and, for every runner-up column ``j`` of ``others (n, J)``, the
        difference ``f_k − f_p`` ``(J, n)`` and its input gradient ``(J, n, C, H, W)`` (``k =
        others[:, j]``, ``p = predicted``; both None: the logits' own argmax and their
        ``candidates − 1`` runner-ups)."""
        logit_parts, difference_parts, gradient_parts = [], [], []
        for rows in pass_slices(x, self.max_batch):
            part = x[rows].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.forward(part)
            p, k = (
                _ranked(logits.detach().float(), candidates)
                if predicted is None or others is None
                else (predicted[rows], others[rows])
            )
            index = torch.arange(part.shape[0], device=part.device)
            differences, gradients = [], []
            for j in range(k.shape[1]):
                difference = logits[index, k[:, j]] - logits[index, p]  # < 0 while p wins against k
                (gradient,) = torch.autograd.grad(difference.sum(), part, retain_graph=j + 1 < k.shape[1])
                differences.append(difference.detach())
                gradients.append(gradient.detach())
            logit_parts.append(logits.detach())
            # A one-class model has no runner-up: no steps, so every example ends stuck (margin NaN).
            difference_parts.append(torch.stack(differences) if differences else logits.new_zeros(0, part.shape[0]))
            gradient_parts.append(torch.stack(gradients) if gradients else part.new_zeros(0, *part.shape))
        return torch.cat(logit_parts), torch.cat(difference_parts, 1), torch.cat(gradient_parts, 1)


def _ranked(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted class ``(n,)`` and the ``count − 1`` runner-up classes ``(n, count − 1)`` by logit
    (``count`` at most the number of classes)."""
    order = logits.argsort(1, descending=True)
    return logits.argmax(1), order[:, 1 : min(count, logits.shape[1])]


class _DeepFoolState:
    """One subspace's DeepFool over the ``B`` examples: the perturbations so far and who is still searching."""

    def __init__(self, subspace: DCTSubspace, x0: torch.Tensor) -> None:
        batch, device = x0.shape[0], x0.device
        self.subspace = subspace
        self.total = torch.zeros_like(x0)
        self.iterations = torch.zeros(batch, dtype=torch.long, device=device)
        self.found = torch.zeros(batch, dtype=torch.bool, device=device)
        self.high_gap = torch.zeros(batch, dtype=torch.float64, device=device)  # gap at x0 + (1 + overshoot)·r
        self.active = torch.arange(batch, device=device)

    def step(self, differences: torch.Tensor, gradients: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Add the DeepFool step of the active examples (``differences (J, a)``, ``gradients (J, a, C, H, W)``
        at their current points); returns which of them are stuck (no usable projected gradient)."""
        best_distance = torch.full((self.active.numel(),), torch.inf, device=differences.device)
        best_step = torch.zeros(gradients.shape[1:], dtype=dtype, device=gradients.device)
        for difference, gradient in zip(differences, gradients):
            w = self.subspace.project(gradient.float()).to(dtype)
            norm = w.flatten(1).norm(dim=1)
            distance = difference.abs() / norm
            better = (distance < best_distance) & (norm > 0)
            step = (difference.abs() / norm.square().clamp_min(1e-30)).view(-1, 1, 1, 1) * w
            best_step = torch.where(better.view(-1, 1, 1, 1), step, best_step)
            best_distance = torch.where(better, distance, best_distance)
        # Under a float64 or bfloat16 model the logits, hence the step, need not be in the images' dtype.
        self.total[self.active] = self.total[self.active] + best_step.to(self.total.dtype)
        self.iterations[self.active] += 1
        return ~torch.isfinite(best_distance)


def _margins(
    passes: _Passes,
    x0: torch.Tensor,
    subspaces: list[DCTSubspace],
    candidates: int,
    max_iter: int,
    overshoot: float,
    refine_steps: int,
) -> list[MarginResult]:
    states = [_DeepFoolState(subspace, x0) for subspace in subspaces]
    # The first step's passes are at x0 for every subspace: they also give the clean prediction.
    logits, first_differences, first_gradients = passes.gradients(x0, candidates=candidates)
    clean_logits = logits.float()
    predicted, others = _ranked(clean_logits, candidates)
    for iteration in range(max_iter):
        searching = [state for state in states if state.active.numel()]
        if not searching:
            break
        if iteration == 0:
            parts = [(first_differences, first_gradients)] * len(searching)
        else:
            points = torch.cat([x0[s.active] + s.total[s.active] for s in searching])
            rows = torch.cat([s.active for s in searching])
            _, differences, gradients = passes.gradients(points, predicted[rows], others[rows])
            sizes = [s.active.numel() for s in searching]
            parts = list(zip(differences.split(sizes, 1), gradients.split(sizes, 1)))
        stuck = [state.step(d, g, x0.dtype) for state, (d, g) in zip(searching, parts)]
        # Flip check at x0 + (1 + overshoot)·r, all subspaces in one stream of passes.
        checks = torch.cat([x0[s.active] + (1 + overshoot) * s.total[s.active] for s in searching])
        rows = torch.cat([s.active for s in searching])
        gaps = _decision_gap(passes.logits(checks).float(), predicted[rows])
        for state, gap, blocked in zip(searching, gaps.split([s.active.numel() for s in searching]), stuck):
            flipped = (gap <= 0) & ~blocked
            state.found[state.active[flipped]] = True
            state.high_gap[state.active[flipped]] = gap[flipped].double()
            state.active = state.active[~flipped & ~blocked]
    return _refined(passes, x0, states, clean_logits, predicted, overshoot, refine_steps)


def _refined(
    passes: _Passes,
    x0: torch.Tensor,
    states: list[_DeepFoolState],
    clean_logits: torch.Tensor,
    predicted: torch.Tensor,
    overshoot: float,
    refine_steps: int,
) -> list[MarginResult]:
    """Regula falsi along the ray x0 + t·r, t ∈ [0, 1 + overshoot], for the examples that flipped only."""
    device = x0.device
    found = [torch.nonzero(state.found).flatten() for state in states]
    rows = torch.cat(found)
    lengths = [state.total.double().flatten(1).norm(dim=1) for state in states]
    directions = torch.cat([state.total[r] for state, r in zip(states, found)])
    low_t = torch.zeros(rows.numel(), dtype=torch.float64, device=device)
    high_t = torch.full_like(low_t, 1.0 + overshoot)
    low_gap = _decision_gap(clean_logits[rows], predicted[rows]).double()
    bracket_gap = torch.cat([state.high_gap[r] for state, r in zip(states, found)])
    if rows.numel():
        for _ in range(refine_steps):
            t = _interpolate(low_t, high_t, low_gap, bracket_gap)
            point = x0[rows] + t.to(x0.dtype).view(-1, 1, 1, 1) * directions
            gap = _decision_gap(passes.logits(point).float(), predicted[rows]).double()
            crossed = gap <= 0
            high_t, bracket_gap = torch.where(crossed, t, high_t), torch.where(crossed, gap, bracket_gap)
            low_t, low_gap = torch.where(crossed, low_t, t), torch.where(crossed, low_gap, gap)
    crossing = _interpolate(low_t, high_t, low_gap, bracket_gap)
    results = []
    for state, r, length, crossing_part, high_part in zip(
        states, found, lengths, crossing.split([r.numel() for r in found]), high_t.split([r.numel() for r in found])
    ):
        margin = torch.full_like(length, torch.nan)
        upper = torch.full_like(length, torch.nan)
        margin[r] = crossing_part * length[r]
        upper[r] = high_part * length[r]
        results.append(MarginResult(margin.float(), upper.float(), predicted, state.iterations))
    return results


def _interpolate(
    low_t: torch.Tensor, high_t: torch.Tensor, low_gap: torch.Tensor, high_gap: torch.Tensor
) -> torch.Tensor:
    """Zero of the line through ``(low_t, low_gap > 0)`` and ``(high_t, high_gap ≤ 0)``, kept inside the bracket."""
    span = (low_gap - high_gap).clamp_min(1e-300)
    t = low_t + low_gap.clamp_min(0) / span * (high_t - low_t)
    return torch.minimum(torch.maximum(t, low_t), high_t)
