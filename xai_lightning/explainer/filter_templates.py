"""Part templates, the mask layer and the filter loss of interpretable conv filters.

Zhang, Wu & Zhu, "Interpretable Convolutional Neural Networks" (CVPR 2018), used by the explainer
network of Zhang et al., "Unsupervised Learning of Neural Networks to Explain Neural Networks"
(2018). A filter is interpretable when, on every image, it fires at one location (one object
part) or not at all. For an ``h × w`` feature map (``n = h·w`` positions) this is encoded by

* one **positive template** per position μ = (μ_y, μ_x)::

      T_μ[i, j] = τ · max(1 − β · (|i − μ_y| / h + |j − μ_x| / w), −1)

  (the paper's ``τ·max(1 − β‖[i,j] − μ‖₁ / n, −1)`` for a square ``n × n`` map), a bump at μ that
  is negative far away from it;
* one **negative template** ``T⁻ = −τ`` everywhere, for images where the filter should be silent;
* priors ``p(T_μ) = α / n`` and ``p(T⁻) = 1 − α`` with ``α = n / (1 + n)``;
* a Gibbs likelihood of a feature map ``x`` given a template over the set ``X`` of maps the
  filter produces on a batch: ``p(x | T) = exp(tr(x·T)) / Z_T``, ``Z_T = Σ_{x∈X} exp(tr(x·T))``,
  where ``tr(x·T) = Σ_ij x_ij T_ij``.

The **filter loss** is ``Loss_f = −MI(X; T) = −Σ_T p(T) Σ_x p(x|T) log(p(x|T) / p(x))`` with
``p(x) = Σ_T p(T) p(x|T)``: high mutual information means each map is explained by one template
(one location, or silence) and different images pick different templates. Defaults are the
paper's: ``τ = 0.5 / n``, ``β = 4``. The loss is computed exactly (all ``n + 1`` templates for
every map, one batched matrix product) and differentiated by autograd, rather than with the
paper's approximate gradient.

The **mask layer** (``x_masked = ReLU(x ∘ shape(μ̂))`` with ``μ̂ = argmax x`` and ``shape`` the
un-scaled template bump) keeps the activation around the strongest position and suppresses
everything far from it; the mask is a constant for autograd, as in the paper.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "filter_loss",
    "mask_to_peak",
    "mutual_information",
    "part_templates",
    "template_entropy",
    "template_log_priors",
    "template_shape",
]

DEFAULT_BETA = 4.0


def _grid(height: int, width: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    return rows, cols


def template_shape(
    height: int, width: int, beta: float = DEFAULT_BETA, device: torch.device | None = None
) -> torch.Tensor:
    """Un-scaled positive template bumps ``(h·w, h, w)``: ``max(1 − β·(|Δi|/h + |Δj|/w), −1)``.

    Row ``μ_y·w + μ_x`` is the bump centred at position ``(μ_y, μ_x)`` (row-major, as
    ``x.flatten(-2)`` orders positions). Equals 1 at the centre and −1 far away.
    """
    rows, cols = _grid(height, width, device)
    distance = (rows.view(-1, 1, 1, 1) - rows.view(1, 1, -1, 1)).abs() / height + (
        cols.view(1, -1, 1, 1) - cols.view(1, 1, 1, -1)
    ).abs() / width  # (μ_y, μ_x, i, j)
    return (1.0 - beta * distance).clamp_min(-1.0).reshape(height * width, height, width)


def part_templates(
    height: int, width: int, tau: float | None = None, beta: float = DEFAULT_BETA, device: torch.device | None = None
) -> torch.Tensor:
    """All templates ``(h·w + 1, h, w)``: the ``h·w`` positive ones (row-major), then the negative one.

    Args:
        tau: template scale; default the paper's ``0.5 / (h·w)``.
        beta: decay of the positive bump per unit of normalised L1 distance (paper: 4).
    """
    tau = 0.5 / (height * width) if tau is None else tau
    positive = tau * template_shape(height, width, beta, device)
    negative = torch.full((1, height, width), -tau, device=device)
    return torch.cat([positive, negative])


def template_log_priors(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``log p(T)`` for the ``h·w + 1`` templates: ``α/n`` each positive, ``1 − α`` negative, ``α = n/(1+n)``."""
    n = height * width
    alpha = n / (1.0 + n)
    priors = torch.full((n + 1,), alpha / n, device=device)
    priors[-1] = 1.0 - alpha
    return priors.log()


def mutual_information(maps: torch.Tensor, tau: float | None = None, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """``MI(X; T)`` per filter, for the feature maps a batch of images produces.

    Args:
        maps: ``(B, F, h, w)`` feature maps of ``F`` filters on ``B`` images (after the ReLU, as in
            the paper). ``X`` is the set of the ``B`` maps of one filter.
        tau, beta: template parameters (:func:`part_templates`).

    Returns:
        ``(F,)`` mutual information in nats, in ``[0, H(T)]``. All-zero maps give 0 (up to rounding).
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, F, h, w); got {tuple(maps.shape)}")
    batch, _, height, width = maps.shape
    templates = part_templates(height, width, tau, beta, maps.device).to(maps.dtype)  # (T, h, w)
    log_prior = template_log_priors(height, width, maps.device).to(maps.dtype)  # (T,)
    traces = torch.einsum("bfp,tp->ftb", maps.flatten(2), templates.flatten(1))  # (F, T, B)
    log_likelihood = traces.log_softmax(dim=-1)  # log p(x|T): normalised over the batch's maps
    log_marginal = torch.logsumexp(log_likelihood + log_prior.view(1, -1, 1), dim=1, keepdim=True)  # log p(x)
    weights = log_prior.exp().view(1, -1, 1) * log_likelihood.exp()  # p(T) p(x|T)
    return (weights * (log_likelihood - log_marginal)).sum(dim=(1, 2))


def filter_loss(maps: torch.Tensor, tau: float | None = None, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Zhang et al.'s filter loss ``−MI(X; T)``, averaged over the ``F`` filters of ``maps (B, F, h, w)``.

    A scalar; lower is better (more interpretable). Needs ``B >= 2`` images to be informative.
    """
    return -mutual_information(maps, tau, beta).mean()


def mask_to_peak(maps: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """The mask layer: ``ReLU(x ∘ shape(μ̂))`` per map, ``μ̂`` the position of its maximum.

    ``maps (B, F, h, w)`` → same shape. The mask is built without gradient (a constant for
    autograd); the activation at ``μ̂`` passes unchanged and the peak position never moves.
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, F, h, w); got {tuple(maps.shape)}")
    height, width = maps.shape[-2:]
    with torch.no_grad():
        shapes = template_shape(height, width, beta, maps.device).to(maps.dtype)  # (h·w, h, w)
        peaks = maps.flatten(2).argmax(dim=-1)  # (B, F)
        mask = shapes[peaks]  # (B, F, h, w)
    return torch.relu(maps * mask)


def template_entropy(height: int, width: int) -> float:
    """``H(T)`` in nats, the upper bound of :func:`mutual_information` for an ``h × w`` map."""
    n = height * width
    alpha = n / (1.0 + n)
    return -(alpha * math.log(alpha / n) + (1 - alpha) * math.log(1 - alpha))
