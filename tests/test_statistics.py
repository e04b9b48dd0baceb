"""Study statistics against scipy and hand computations: t-interval, bootstrap, paired tests, Holm, verdict words."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from xai_lightning.studies.statistics import (
    VERDICT_RULE,
    Interval,
    bootstrap_interval,
    holm,
    paired_comparison,
    t_interval,
    verdict_word,
)

VALUES = [0.61, 0.58, 0.66, 0.70, 0.55]


def test_t_interval_matches_scipy_and_the_hand_formula():
    interval = t_interval(VALUES)
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(VALUES), scale=stats.sem(VALUES))
    assert interval.estimate == pytest.approx(0.62)
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
    # By hand: Σ(x - 0.62)² = 0.0001 + 0.0016 + 0.0016 + 0.0064 + 0.0049 = 0.0146; t_{0.975, 4} = 2.776445.
    half = 2.7764451052 * math.sqrt(0.0146 / 4) / math.sqrt(5)
    assert interval.high - interval.estimate == pytest.approx(half, rel=1e-6)
    assert t_interval([0.3, 0.3, 0.3]).low == pytest.approx(0.3)  # no spread: zero width
    single = t_interval([0.4])
    assert single.estimate == 0.4 and math.isnan(single.low) and not single.excludes(0.0)
    assert str(t_interval([1.0, 2.0, 3.0])).startswith("2 [")


def test_bootstrap_interval_is_seeded_contains_the_t_centre_and_agrees_with_scipy():
    first = bootstrap_interval(VALUES, seed=3)
    assert first == bootstrap_interval(VALUES, seed=3)  # reproducible
    spread_out = np.random.default_rng(1).normal(size=12)
    assert bootstrap_interval(spread_out, seed=3) != bootstrap_interval(spread_out, seed=4)  # the seed matters
    centre = t_interval(VALUES).estimate
    assert first.low < centre < first.high
    reference = stats.bootstrap(
        (np.asarray(VALUES),),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(0),
    ).confidence_interval
    # Two independent 10 000-resample estimates of the same quantiles: agree to a small fraction of the spread.
    spread = float(np.std(VALUES, ddof=1))
    assert first.low == pytest.approx(reference.low, abs=0.05 * spread)
    assert first.high == pytest.approx(reference.high, abs=0.05 * spread)
    # A percentile bootstrap of the mean is narrower than the t-interval at n = 5 (it ignores the t tails).
    assert first.high - first.low < t_interval(VALUES).high - t_interval(VALUES).low


def test_paired_comparison_matches_scipy_t_test_and_wilcoxon():
    robust = [0.70, 0.66, 0.72, 0.69, 0.75, 0.64, 0.71]
    standard = [0.61, 0.63, 0.60, 0.66, 0.62, 0.59, 0.65]
    result = paired_comparison(robust, standard)
    reference = stats.ttest_rel(robust, standard)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.t_statistic == pytest.approx(reference.statistic)
    assert result.p_wilcoxon == pytest.approx(stats.wilcoxon(robust, standard).pvalue)
    differences = np.subtract(robust, standard)
    assert result.difference == t_interval(differences)
    assert result.difference.excludes(0.0) and result.n == 7
    # By hand: t = mean(d) / (s_d / √n).
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(7))
    assert result.t_statistic == pytest.approx(t)
    few = paired_comparison(robust[:5], standard[:5])
    assert few.p_wilcoxon is None  # below 6 pairs the test cannot reach p < 0.05
    same = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.p_value == 1.0 and not same.difference.excludes(0.0)
    shifted = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert shifted.p_value == 0.0 and shifted.difference.estimate == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one value per seed"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        t_interval([1.0, float("nan")])


def test_holm_by_hand():
    # m = 4 tested hypotheses (the NaN is not tested): sorted 0.01, 0.02, 0.03, 0.2
    # → 4·0.01 = 0.04; 3·0.02 = 0.06; max(0.06, 2·0.03) = 0.06; max(0.06, 1·0.2) = 0.2.
    adjusted = holm([0.03, 0.01, float("nan"), 0.2, 0.02])
    assert adjusted[[1, 4, 0, 3]] == pytest.approx([0.04, 0.06, 0.06, 0.2])
    assert math.isnan(adjusted[2])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone
    assert holm([]).size == 0


def test_verdict_words_follow_the_stated_rule():
    excluding = Interval(0.1, 0.05, 0.15, 5)
    including = Interval(0.1, -0.01, 0.21, 5)
    assert verdict_word(0.01, excluding, 5) == "robust higher"
    assert verdict_word(0.01, Interval(-0.1, -0.15, -0.05, 5), 5) == "robust lower"
    assert verdict_word(0.01, including, 5) == "no significant difference"  # p small but CI touches 0
    assert verdict_word(0.2, excluding, 5) == "no significant difference"  # CI clear but corrected p too large
    assert verdict_word(0.001, excluding, 2) == "too few seeds to tell"
    rule = VERDICT_RULE.format(treatment="robust", reference="standard", alpha=0.05, min_seeds=3, min_wilcoxon=6)
    assert "Holm" in rule and "excludes 0" in rule and "fewer than 3 seeds" in rule
