"""Summaries of CaCE estimates over seeds: mean ± sd, a t-interval, and estimator errors against the ground truth.

A CaCE study (Goyal et al. 2019) trains one model per (confounding level, seed) and estimates the
concept's effect several ways. Every row of its table is a mean over ≥ 3 seeds with the sample
standard deviation and a 95 % t-interval ``mean ± t_{0.975, n−1} · sd / √n`` (REFERENCE.md,
statistics for studies). An estimator's error is its mean absolute error to the ground truth over
the levels, computed per seed (so that two estimators on the same models form a pair) and
compared with a paired t-test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedComparison", "SeedSummary", "compare_paired", "mean_absolute_errors", "summarise_seeds"]


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample sd and 95 % t-interval of one quantity over ``n`` seeds (NaNs dropped)."""

    mean: float
    sd: float
    n: int
    ci_low: float
    ci_high: float

    def format(self, digits: int = 3, signed: bool = True) -> str:
        """``"+0.412 ± 0.051"`` (mean ± sd), or ``"n/a"`` without values."""
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        sign = "+" if signed else ""
        if self.n < 2:
            return f"{self.mean:{sign}.{digits}f}"
        return f"{self.mean:{sign}.{digits}f} ± {self.sd:.{digits}f}"


def summarise_seeds(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """:class:`SeedSummary` of ``values`` (one per seed). One value: sd and interval are NaN."""
    from scipy import stats

    data = np.asarray([float(v) for v in values], dtype=np.float64)
    data = data[~np.isnan(data)]
    n = int(data.size)
    if n == 0:
        nan = float("nan")
        return SeedSummary(nan, nan, 0, nan, nan)
    mean = float(data.mean())
    if n < 2:
        return SeedSummary(mean, float("nan"), 1, float("nan"), float("nan"))
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return SeedSummary(mean, sd, n, mean - half, mean + half)


def mean_absolute_errors(
    runs: Sequence[Mapping[str, float]], estimator: str, truth: str = "gt_cace", seed_key: str = "seed"
) -> dict[int, float]:
    """Per seed: the mean over that seed's runs (levels) of ``|estimator − truth|``; runs with NaN are skipped."""
    errors: dict[int, list[float]] = {}
    for run in runs:
        estimate, true = float(run[estimator]), float(run[truth])
        if math.isnan(estimate) or math.isnan(true):
            continue
        errors.setdefault(int(run[seed_key]), []).append(abs(estimate - true))
    return {seed: float(np.mean(values)) for seed, values in sorted(errors.items())}


@dataclass(frozen=True)
class PairedComparison:
    """``a − b`` over paired seeds: mean difference, its 95 % t-interval and the two-sided paired t-test p-value."""

    difference: SeedSummary
    p_value: float

    @property
    def verdict(self) -> str:
        """``"lower"``/``"higher"`` (a vs b) when p < 0.05 and the interval excludes 0; else "no significant
        difference"; "too few seeds" under 3 pairs."""
        d = self.difference
        if d.n < 3:
            return "too few seeds"
        if self.p_value < 0.05 and (d.ci_high < 0 or d.ci_low > 0):
            return "lower" if d.mean < 0 else "higher"
        return "no significant difference"


def compare_paired(a: Mapping[int, float], b: Mapping[int, float]) -> PairedComparison:
    """Paired comparison of two per-seed quantities (e.g. two estimators' mean absolute errors) on common seeds."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    differences = [a[s] - b[s] for s in seeds]
    summary = summarise_seeds(differences)
    if summary.n < 2 or summary.sd == 0:
        p = float("nan") if summary.n < 2 else (0.0 if summary.mean != 0 else 1.0)
    else:
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return PairedComparison(summary, p)
