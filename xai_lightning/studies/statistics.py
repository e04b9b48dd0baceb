"""Statistics for studies over seeds: confidence intervals, paired comparisons, Holm correction, verdict words.

Pure numpy/scipy (no Lightning): a study trains every variant with the same seeds, so the runs of
one seed form a *pair* (same data order, same initial weights); what differs between the two runs
of a pair is the treatment alone. Definitions (REFERENCE.md, "Statistics for studies"):

* **Confidence interval over seeds** — ``mean ± t_{1-α/2, n-1} · s/√n`` (Student's t-interval),
  and a seeded percentile bootstrap of the mean (10 000 resamples) as a second estimate that does
  not assume normality.
* **Paired comparison** — the differences ``d_s = treatment_s − reference_s`` over seeds ``s``:
  their t-interval, a paired t-test (two-sided, ``H0: E[d] = 0``) and, when ``n ≥ 6``, the
  Wilcoxon signed-rank test (with fewer pairs its smallest attainable p exceeds 0.05).
* **Holm–Bonferroni** (Holm 1979) — step-down adjustment of the p-values of the measures reported
  together: the ``i``-th smallest of ``m`` becomes ``max_{j≤i} min(1, (m − j + 1) · p_(j))``.
* **Verdict words** — "higher"/"lower" only when the Holm-adjusted p < α *and* the paired
  difference's interval excludes 0; "no significant difference" otherwise; "too few seeds to
  tell" with fewer than 3 pairs (:data:`VERDICT_RULE` states it in words for reports).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_SEEDS",
    "MIN_SEEDS_WILCOXON",
    "VERDICT_RULE",
    "Interval",
    "PairedComparison",
    "bootstrap_interval",
    "holm",
    "paired_comparison",
    "t_interval",
    "verdict_word",
]

#: Fewer pairs than this: no verdict ("too few seeds to tell").
MIN_SEEDS = 3
#: The Wilcoxon signed-rank test is reported from this many pairs on (REFERENCE.md).
MIN_SEEDS_WILCOXON = 6
#: Resamples of the bootstrap intervals (REFERENCE.md).
BOOTSTRAP_RESAMPLES = 10_000

VERDICT_RULE = (
    "Verdict rule: for each measure, the runs of one seed form a pair (same data order and initial weights); "
    'd = {treatment} − {reference} per seed. "{treatment} higher" / "{treatment} lower" only when the paired '
    "t-test's p, Holm-corrected across the measures of this table, is below {alpha:g} AND the 95 % t-interval of d "
    'excludes 0; "no significant difference" otherwise; "too few seeds to tell" with fewer than {min_seeds} seeds. '
    "Intervals are 95 % Student-t intervals over seeds (a seeded percentile bootstrap with 10 000 resamples is "
    "reported beside them); the Wilcoxon signed-rank p is shown from {min_wilcoxon} seeds on."
)


def _values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(array).any():
        raise ValueError(f"{name} contain NaN; drop the missing runs before computing intervals ({array.tolist()})")
    return array


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval.

    Attributes:
        estimate: the sample mean.
        low, high: the interval's ends (NaN when it is undefined, e.g. one value).
        n: number of values (seeds).
        confidence: e.g. 0.95.
        method: ``"t"`` or ``"bootstrap"``.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "t"

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the (defined) interval."""
        if math.isnan(self.low) or math.isnan(self.high):
            return False
        return value < self.low or value > self.high

    def __str__(self) -> str:
        if math.isnan(self.estimate):
            return "–"
        if math.isnan(self.low):
            return f"{self.estimate:.3g}"
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _point_only(
    values: Sequence[float] | np.ndarray, confidence: float, method: str
) -> tuple[np.ndarray, Interval | None]:
    """Checked values, and the interval when there are too few for a spread (none: NaN; one: NaN ends)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    x = _values(values)
    if x.size >= 2:
        return x, None
    estimate = float(x[0]) if x.size else float("nan")
    return x, Interval(estimate, float("nan"), float("nan"), int(x.size), confidence, method)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Student's t-interval of the mean: ``mean ± t_{(1+c)/2, n-1} · s/√n`` (``s`` with ``n − 1``).

    One value gives its value with an undefined (NaN) interval; zero spread gives a zero-width one.
    """
    from scipy import stats

    x, degenerate = _point_only(values, confidence, "t")
    if degenerate is not None:
        return degenerate
    n, mean = x.size, float(x.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence, "t")


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean (Efron 1979), seeded: the same values and seed give
    the same interval. ``resamples`` resamples of ``n`` values drawn with replacement, one vectorised
    draw; the interval is the ``(1 − c)/2`` and ``(1 + c)/2`` quantiles of their means."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1; got {resamples}")
    x, degenerate = _point_only(values, confidence, "bootstrap")
    if degenerate is not None:
        return degenerate
    n, mean = x.size, float(x.mean())
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = x[rows].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(mean, float(low), float(high), n, confidence, "bootstrap")


@dataclass(frozen=True)
class PairedComparison:
    """``treatment − reference`` over paired seeds.

    Attributes:
        difference: t-interval of the per-seed differences.
        difference_bootstrap: bootstrap interval of the same.
        t_statistic, p_value: the two-sided paired t-test (p = 1 when every difference is 0,
            p = 0 when all differences are equal and non-zero; NaN with fewer than 2 pairs).
        p_wilcoxon: two-sided Wilcoxon signed-rank p (exact where scipy can), or None below
            :data:`MIN_SEEDS_WILCOXON` pairs.
        n: number of pairs.
    """

    difference: Interval
    difference_bootstrap: Interval
    t_statistic: float
    p_value: float
    p_wilcoxon: float | None
    n: int


def paired_comparison(
    treatment: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Compare paired samples (``treatment[s]`` and ``reference[s]`` come from the same seed ``s``)."""
    from scipy import stats

    a, b = _values(treatment, "treatment values"), _values(reference, "reference values")
    if a.shape != b.shape:
        raise ValueError(f"Paired samples need one value per seed on both sides; got {a.size} and {b.size}")
    d = a - b
    n = d.size
    interval = t_interval(d, confidence)
    boot = bootstrap_interval(d, confidence, resamples, seed)
    if n < 2:
        t, p = float("nan"), float("nan")
    elif float(d.std(ddof=1)) <= 1e-12 * float(np.abs(d).max()) or not np.any(d):
        # Constant differences (up to rounding): scipy returns NaN or a p of rounding noise; a constant
        # difference is either no difference or an exact one.
        t = 0.0 if float(d.mean()) == 0.0 else math.copysign(math.inf, float(d.mean()))
        p = 1.0 if float(d.mean()) == 0.0 else 0.0
    else:
        result = stats.ttest_rel(a, b)
        t, p = float(result.statistic), float(result.pvalue)
    p_wilcoxon = None
    if n >= MIN_SEEDS_WILCOXON:
        p_wilcoxon = 1.0 if not np.any(d != 0) else float(stats.wilcoxon(a, b).pvalue)
    return PairedComparison(interval, boot, t, p, p_wilcoxon, n)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    NaN entries (measures that were not tested, e.g. not logged) stay NaN and do not count
    towards the number of hypotheses ``m``.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def verdict_word(
    adjusted_p: float,
    difference: Interval,
    n: int,
    treatment: str = "robust",
    alpha: float = 0.05,
    min_seeds: int = MIN_SEEDS,
) -> str:
    """The plain-words verdict of one measure (see :data:`VERDICT_RULE`)."""
    if n < min_seeds:
        return "too few seeds to tell"
    if not math.isnan(adjusted_p) and adjusted_p < alpha and difference.excludes(0.0):
        return f"{treatment} {'higher' if difference.estimate > 0 else 'lower'}"
    return "no significant difference"
