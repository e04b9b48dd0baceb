"""How well token attributions find the tokens that decide the label (TriggerText's trigger words).

Token scores ``(B, T)`` (larger = more relevant), a ground-truth mask of relevant tokens and a mask
of valid tokens (not padding) per sentence. Each score has its chance level — the value a random
ranking reaches on average — to beat:

==========================  ===================================================  ========================
score                       definition                                           chance
==========================  ===================================================  ========================
``top_k_precision``         fraction of the k best-scored valid tokens that      relevant / valid tokens
                            are relevant
``mass_on_relevant``        ``Σ_relevant s⁺ / Σ_valid s⁺`` (positive mass)       relevant / valid tokens
==========================  ===================================================  ========================
"""

from __future__ import annotations

import torch

__all__ = ["chance_precision", "mass_on_relevant", "top_k_precision"]


def _check(scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape != relevant.shape or scores.shape != valid.shape:
        raise ValueError(
            f"Token scores {tuple(scores.shape)}, relevant {tuple(relevant.shape)} and valid "
            f"{tuple(valid.shape)} masks must all be (B, T)."
        )


def top_k_precision(scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor, k: int = 1) -> torch.Tensor:
    """``(B,)`` fraction of each sentence's ``min(k, valid)`` highest-scored valid tokens that are relevant
    (NaN for a sentence without valid tokens). Ties go to the earlier token."""
    _check(scores, relevant, valid)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    masked = scores.double().masked_fill(~valid.bool(), float("-inf"))
    k_eff = min(k, scores.shape[1])
    # Stable descending order: among equal scores the earlier token comes first.
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k_eff]
    picked_relevant = relevant.bool().gather(1, order) & valid.bool().gather(1, order)
    counts = valid.sum(1).clamp_max(k_eff)
    return torch.where(counts > 0, picked_relevant.sum(1) / counts.clamp_min(1), torch.nan).float()


def chance_precision(relevant: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B,)`` expected :func:`top_k_precision` of a random ranking: relevant / valid tokens."""
    count = valid.sum(1)
    hits = (relevant.bool() & valid.bool()).sum(1)
    return torch.where(count > 0, hits / count.clamp_min(1), torch.nan).float()


def mass_on_relevant(scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of the positive score mass on relevant tokens (NaN without positive mass)."""
    _check(scores, relevant, valid)
    positive = scores.double().clamp_min(0) * valid
    total = positive.sum(1)
    inside = (positive * relevant).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.nan).float()
