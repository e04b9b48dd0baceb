"""Out-of-distribution detection by an uncertainty score: AUROC and FPR at 95 % TPR.

Every score follows one convention: **higher = more uncertain = more likely out-of-distribution**
(entropy, mutual information, reconstruction error; for the max-softmax baseline of Hendrycks &
Gimpel, ICLR 2017, the score is ``1 − max_k p_k``).

* AUROC = P(score(OOD) > score(in)) + ½ P(tie): 0.5 is chance, 1 a perfect separation
  (Mann–Whitney U / (n_in · n_out), ties averaged — equal to scikit-learn's ``roc_auc_score``).
* FPR at 95 % TPR, as in ODIN (Liang, Li & Srikant, ICLR 2018): in-distribution inputs are the
  positives, accepted when their score is at most a threshold chosen so that at least 95 % of
  them are accepted; the FPR is the fraction of OOD inputs accepted as well (lower is better;
  equal to the smallest false-positive rate on scikit-learn's ROC curve with TPR ≥ 0.95).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["OODDetection", "fpr_at_tpr", "ood_auroc", "ood_detection"]


def _check(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(in_scores).detach().double().reshape(-1).cpu()
    b = torch.as_tensor(out_scores).detach().double().reshape(-1).cpu()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError(
            f"OOD detection needs scores of both sets; got {a.numel()} in-distribution and "
            f"{b.numel()} out-of-distribution"
        )
    if torch.isnan(a).any() or torch.isnan(b).any():
        raise ValueError("OOD scores contain NaN")
    return a, b


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values (n,)`` with ties given their average rank."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # last 1-based position of each tie group
    group_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values)
    ranks[order] = group_rank[inverse]
    return ranks


def ood_auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """AUROC of separating ``out_scores`` (positives, higher) from ``in_scores``; 0.5 = chance."""
    a, b = _check(in_scores, out_scores)
    ranks = _average_ranks(torch.cat([a, b]))
    u = ranks[a.numel() :].sum() - b.numel() * (b.numel() + 1) / 2
    return float(u / (a.numel() * b.numel()))


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """Fraction of OOD inputs accepted when the threshold accepts at least ``tpr`` of in-distribution inputs."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1]; got {tpr}")
    a, b = _check(in_scores, out_scores)
    # The smallest threshold that accepts (score <= threshold) at least ceil(tpr · n) in-distribution inputs.
    k = max(1, math.ceil(tpr * a.numel() - 1e-9))
    threshold = torch.sort(a).values[k - 1]
    return float((b <= threshold).double().mean())


@dataclass(frozen=True)
class OODDetection:
    """How well one score separates OOD from in-distribution inputs."""

    auroc: float
    fpr95: float
    mean_in: float
    mean_out: float

    def scalars(self) -> dict[str, float]:
        return {"auroc": self.auroc, "fpr95": self.fpr95, "mean_in": self.mean_in, "mean_ood": self.mean_out}


def ood_detection(in_scores: torch.Tensor, out_scores: torch.Tensor) -> OODDetection:
    """AUROC, FPR at 95 % TPR and the mean score of each set."""
    a, b = _check(in_scores, out_scores)
    return OODDetection(
        auroc=ood_auroc(a, b), fpr95=fpr_at_tpr(a, b), mean_in=float(a.mean()), mean_out=float(b.mean())
    )
