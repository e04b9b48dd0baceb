"""Summaries of a sampled predictive distribution, and the batched sampler behind every sampling method.

MC dropout passes, ensemble members and Bayesian weight samples all give ``S`` class-probability
vectors per example, ``samples (S, N, K)``. Their mean is the predictive distribution; its
entropy is the total uncertainty, which splits into the expected entropy of the samples
(aleatoric) and the mutual information between the prediction and the model parameters
(epistemic; BALD, Houlsby et al. 2011; Gal, Islam & Ghahramani 2017):

    H[mean_s p_s]  =  mean_s H[p_s]  +  I(y; θ | x).

Entropies are in nats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from xai_lightning.core import batch_slices

__all__ = [
    "PredictiveSummary",
    "entropy",
    "expected_entropy",
    "mutual_information",
    "predictive_std",
    "sample_passes",
    "summarise_samples",
]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension, with ``0 log 0 = 0``: ``(..., K) → (...)``."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def expected_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Mean over samples of each sample's entropy: ``samples (S, N, K) → (N,)`` (the aleatoric part)."""
    return entropy(samples).mean(0)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """BALD mutual information ``H[mean_s p_s] − mean_s H[p_s]``: ``samples (S, N, K) → (N,)``, nats, ≥ 0.

    Zero when every sample predicts the same distribution (no disagreement), up to ``log S`` when
    confident samples disagree completely. Tiny negative rounding errors are clamped to 0.
    """
    _check_samples(samples)
    return (entropy(samples.mean(0)) - expected_entropy(samples)).clamp_min(0.0)


def predictive_std(samples: torch.Tensor) -> torch.Tensor:
    """Per-class standard deviation of the probabilities over samples (unbiased): ``(S, N, K) → (N, K)``."""
    _check_samples(samples)
    return samples.std(0, correction=1)


def _check_samples(samples: torch.Tensor) -> None:
    if samples.dim() != 3:
        raise ValueError(f"samples must be (S, N, K) probabilities; got {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        raise ValueError(f"A spread over samples needs at least 2 samples; got S={samples.shape[0]}")


@dataclass(frozen=True)
class PredictiveSummary:
    """The predictive distribution of ``S`` samples and its uncertainty scores, each ``(N,)`` unless noted.

    Attributes:
        mean: ``(N, K)`` mean probability over samples (the predictive distribution).
        entropy: predictive entropy ``H[mean]`` (total uncertainty, nats).
        expected_entropy: ``mean_s H[p_s]`` (aleatoric part).
        mutual_information: BALD, ``entropy − expected_entropy`` (epistemic part).
        std: mean over classes of the per-class standard deviation over samples.
    """

    mean: torch.Tensor
    entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    std: torch.Tensor


def summarise_samples(samples: torch.Tensor) -> PredictiveSummary:
    """All the summaries of ``samples (S, N, K)`` probabilities (S ≥ 2) at once."""
    _check_samples(samples)
    mean = samples.mean(0)
    total = entropy(mean)
    aleatoric = expected_entropy(samples)
    return PredictiveSummary(
        mean=mean,
        entropy=total,
        expected_entropy=aleatoric,
        mutual_information=(total - aleatoric).clamp_min(0.0),
        std=predictive_std(samples).mean(-1),
    )


def sample_passes(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    passes: int,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Run ``passes`` stochastic forward passes of ``x (N, ...)`` as a few large batches: ``(passes, N, K)``.

    The input is repeated ``passes`` times along the batch (pass-major rows: row ``t·N + n`` is
    example ``n`` in pass ``t``) and evaluated in slices of at most ``max_batch`` rows (None: one
    forward for everything). ``forward(rows_x, example_index (R,), pass_index (R,))`` returns
    ``(R, K)`` outputs; it receives the indices so that its noise can be keyed by example and
    pass (see :class:`~xai_lightning.uncertainty.KeyedNoise`), which makes the result
    independent of ``max_batch``.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1; got {passes}")
    n = x.shape[0]
    total = n * passes
    outputs = []
    for rows in batch_slices(total, max_batch):
        index = torch.arange(rows.start, rows.stop, device=x.device)
        example, pass_index = index % n, index // n
        outputs.append(forward(x[example], example, pass_index))
    out = torch.cat(outputs)
    return out.view(passes, n, *out.shape[1:])
