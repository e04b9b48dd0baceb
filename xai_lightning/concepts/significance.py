"""Statistical testing of TCAV scores (Kim et al. 2018, section 3.2 "Statistical significance testing").

A TCAV score from one CAV can be high by chance: a CAV trained on a *random* set of images also
has some direction. The test repeats TCAV with N random counter-sets (each concept vs random
set r) and compares those N scores with N random-vs-random scores (a random "concept" vs the same
random sets) with a two-sided two-sample t-test. A concept is significant when ``p < α``, or
``p < α / m`` with Bonferroni correction over the ``m`` hypotheses tested.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["two_sided_t_test"]


def two_sided_t_test(concept: torch.Tensor, random: torch.Tensor) -> torch.Tensor:
    """p-values of Student's two-sample t-test (equal variances, as tcav's ``scipy.stats.ttest_ind``).

    Args:
        concept: ``(..., R1)`` scores of concept-vs-random CAVs (last dimension: random sets).
        random: ``(..., R2)`` random-vs-random scores, broadcastable to ``concept`` except in the
            last dimension.

    Returns:
        ``(...)`` float64 p-values. Degenerate samples with zero variance in both groups get
        ``p = 1`` when their means are equal and ``p = 0`` otherwise (scipy returns NaN there);
        NaN scores (e.g. a class with no examples) give NaN.
    """
    from scipy import stats

    a = concept.double()
    b = random.double()
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    a = a.expand(*shape, a.shape[-1])
    b = b.expand(*shape, b.shape[-1])
    n1, n2 = a.shape[-1], b.shape[-1]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"The t-test needs at least 2 random sets per group; got {n1} and {n2}.")
    mean1, mean2 = a.mean(-1), b.mean(-1)
    pooled = ((a - mean1.unsqueeze(-1)).square().sum(-1) + (b - mean2.unsqueeze(-1)).square().sum(-1)) / (n1 + n2 - 2)
    scale = (pooled * (1.0 / n1 + 1.0 / n2)).sqrt()
    difference = mean1 - mean2
    t = difference / scale
    p = torch.as_tensor(2.0 * stats.t.sf(np.abs(t.numpy()), df=n1 + n2 - 2), dtype=torch.float64)
    degenerate = scale <= 1e-12 * torch.maximum(mean1.abs(), mean2.abs()).clamp_min(1.0)
    p = torch.where(degenerate, (difference.abs() <= 1e-12).double(), p)
    return torch.where(torch.isnan(difference), torch.full_like(p, float("nan")), p)
