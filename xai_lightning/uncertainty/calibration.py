"""Calibration of class probabilities: ECE, MCE, NLL, Brier score and the reliability diagram's bins.

Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks" (ICML 2017). The
confidence of a prediction is its largest class probability; predictions are grouped into
``num_bins`` equal-width confidence bins (15 by default, as in the paper), and

    ECE = Σ_b (n_b / N) · |acc_b − conf_b|,        MCE = max_b |acc_b − conf_b| (non-empty bins),

with ``acc_b`` the accuracy and ``conf_b`` the mean confidence of bin ``b``. Bins are
``[b/B, (b+1)/B)`` as in torchmetrics' ``MulticlassCalibrationError`` (with which the ECE agrees,
tested), except that a confidence of exactly 1.0 belongs to the last bin: torchmetrics counts it in
an extra bin of its own, which only matters when some probabilities saturate to 1.0 in float32.

Also: negative log-likelihood ``−mean log p_y`` (nats) and the multi-class Brier score
``mean Σ_k (p_k − 1[k = y])²`` (Brier 1950; range [0, 2]).

:class:`CalibrationBins` is a ``torchmetrics.Metric`` that accumulates the bins (and the NLL and
Brier sums) over a probe set and across processes (``dist_reduce_fx="sum"``);
:func:`calibration_report` is the one-call functional form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics import Metric

__all__ = ["CalibrationBins", "CalibrationReport", "calibration_report", "expected_calibration_error"]

#: Probabilities are clamped to this before the log in the NLL (a confident wrong prediction costs ~ 69 nats, not inf).
_TINY = 1e-30


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of a set of predictions; bins are equal-width confidence intervals.

    Attributes:
        ece: expected calibration error (probability units, 0 = perfectly calibrated).
        mce: maximum calibration error over the non-empty bins.
        nll: mean negative log-likelihood of the labels (nats).
        brier: mean multi-class Brier score.
        accuracy: fraction of top-1 predictions that are correct.
        confidence: mean top-1 probability.
        bin_edges: ``(B + 1,)`` bin boundaries in [0, 1].
        bin_accuracy, bin_confidence: ``(B,)`` per-bin accuracy and mean confidence (NaN where empty).
        bin_count: ``(B,)`` predictions per bin.
    """

    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float
    confidence: float
    bin_edges: torch.Tensor
    bin_accuracy: torch.Tensor
    bin_confidence: torch.Tensor
    bin_count: torch.Tensor

    def scalars(self) -> dict[str, float]:
        """``{"ece", "mce", "nll", "brier", "accuracy", "confidence"}``."""
        return {
            "ece": self.ece,
            "mce": self.mce,
            "nll": self.nll,
            "brier": self.brier,
            "accuracy": self.accuracy,
            "confidence": self.confidence,
        }


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, K) class probabilities; got {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({probs.shape[0]},); got {tuple(labels.shape)}")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1 + 1e-4):
        raise ValueError("probs must be probabilities in [0, 1] (apply softmax to logits first)")


def bin_index(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin of each confidence: ``[b/B, (b+1)/B)``, with 1.0 in the last bin (torchmetrics' boundaries)."""
    edges = torch.linspace(0, 1, num_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, num_bins - 1)


class CalibrationBins(Metric):
    """Accumulate per-bin counts, confidences and hits, plus NLL and Brier sums, over batches and ranks.

    ``update(probs (N, K), labels (N,))``; ``report()`` returns a :class:`CalibrationReport`
    (``compute()`` the same fields as a dict of tensors).

    Args:
        num_bins: equal-width confidence bins (Guo et al. use 15).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    # Metric states registered with ``add_state`` in ``__init__`` (declared here for type checkers).
    count: torch.Tensor
    confidence_sum: torch.Tensor
    correct_sum: torch.Tensor
    nll_sum: torch.Tensor
    brier_sum: torch.Tensor

    def __init__(self, num_bins: int = 15, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1; got {num_bins}")
        self.num_bins = num_bins
        zeros = torch.zeros(num_bins, dtype=torch.float64)
        self.add_state("count", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("confidence_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("correct_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("nll_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("brier_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.long().to(probs.device)
        _check(probs, labels)
        probs = probs.double()
        confidence, predicted = probs.max(1)
        correct = (predicted == labels).double()
        bins = bin_index(confidence, self.num_bins)
        self.count += torch.bincount(bins, minlength=self.num_bins).double()
        self.confidence_sum += torch.bincount(bins, weights=confidence, minlength=self.num_bins)
        self.correct_sum += torch.bincount(bins, weights=correct, minlength=self.num_bins)
        true_prob = probs.gather(1, labels.view(-1, 1)).squeeze(1)
        self.nll_sum += -torch.log(true_prob.clamp_min(_TINY)).sum()
        one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
        self.brier_sum += (probs - one_hot).square().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """The fields of :class:`CalibrationReport` as tensors (synchronised across processes when
        torchmetrics syncs); :meth:`report` wraps them."""
        total = self.count.sum()
        if total == 0:
            raise ValueError("CalibrationBins has no predictions: call update() first")
        nonempty = self.count > 0
        accuracy = torch.where(nonempty, self.correct_sum / self.count.clamp_min(1), torch.nan)
        confidence = torch.where(nonempty, self.confidence_sum / self.count.clamp_min(1), torch.nan)
        gap = (accuracy - confidence).abs()
        return {
            "ece": ((self.count / total) * gap.nan_to_num(0.0)).sum(),
            "mce": gap[nonempty].max(),
            "nll": self.nll_sum / total,
            "brier": self.brier_sum / total,
            "accuracy": self.correct_sum.sum() / total,
            "confidence": self.confidence_sum.sum() / total,
            "bin_edges": torch.linspace(0, 1, self.num_bins + 1, dtype=torch.float64),
            "bin_accuracy": accuracy,
            "bin_confidence": confidence,
            "bin_count": self.count.long(),
        }

    def report(self) -> CalibrationReport:
        """:meth:`compute` as a :class:`CalibrationReport` (floats and CPU tensors)."""
        values = self.compute()
        return CalibrationReport(
            ece=float(values["ece"]),
            mce=float(values["mce"]),
            nll=float(values["nll"]),
            brier=float(values["brier"]),
            accuracy=float(values["accuracy"]),
            confidence=float(values["confidence"]),
            bin_edges=values["bin_edges"].cpu(),
            bin_accuracy=values["bin_accuracy"].cpu(),
            bin_confidence=values["bin_confidence"].cpu(),
            bin_count=values["bin_count"].cpu(),
        )


def calibration_report(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> CalibrationReport:
    """Calibration of ``probs (N, K)`` against ``labels (N,)`` in one call (see :class:`CalibrationBins`)."""
    metric = CalibrationBins(num_bins=num_bins, sync_on_compute=False).to(probs.device)
    metric.update(probs, labels)
    return metric.report()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """ECE of ``probs (N, K)`` against ``labels (N,)`` with ``num_bins`` equal-width bins."""
    return calibration_report(probs, labels, num_bins).ece
