"""rledger.stats: calibration by simulation (coverage, error rates at 10 seeds) and agreement with
scipy / statsmodels on known cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from stats_sim import GENERATORS, N_EXPERIMENTS, SEEDS, coverage, normal_diffs, outcome_rate

from rledger import stats


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_studentized_interval_covers_at_10_seeds(name: str) -> None:
    """Coverage of the 95% interval of the mean, over 2,000 synthetic experiments of 10 seeds each,
    within [0.93, 0.97]; the percentile bootstrap of the same data (the old code's) covers less."""
    studentized, percentile = coverage(name)
    assert 0.93 <= studentized <= 0.97, studentized
    assert percentile < studentized


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("sign", [1, -1])
def test_equivalence_false_no_effect_at_the_margin(name: str, sign: int) -> None:
    """A true effect equal to the margin (either side) is called "no effect" in at most 5% of 2,000
    experiments of 10 seeds."""
    rate = outcome_rate(name, sign * 0.1, 0.1, "no effect", seed=11 + sign)
    assert rate <= 0.05, rate


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_one_sided_test_false_effect_at_zero(name: str) -> None:
    rate = outcome_rate(name, 0.0, 0.1, "effect", seed=3)
    assert rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / N_EXPERIMENTS), rate


def test_decisions_have_power_where_they_should() -> None:
    """Not vacuous: a clear effect is found and a clear null is shown equivalent, most of the time."""
    rng = np.random.default_rng(5)
    effect = [stats.decide(row, 0.1).outcome for row in normal_diffs(rng, 0.4, (200, SEEDS))]
    null = [stats.decide(row, 0.3).outcome for row in normal_diffs(rng, 0.0, (200, SEEDS))]
    assert np.mean([c == "effect" for c in effect]) > 0.95
    assert np.mean([c == "no effect" for c in null]) > 0.9


def test_interval_matches_a_naive_studentized_bootstrap() -> None:
    x = np.array([0.1, 0.3, 0.0, 0.2, 0.25, 0.05, 0.4, 0.1, 0.15, 0.3])
    iv = stats.interval(x, n_resamples=4000, seed=3)
    idx = np.random.default_rng(3).integers(0, x.size, size=(4000, x.size))
    se = x.std(ddof=1) / np.sqrt(x.size)
    ts = []
    for row in idx:
        xb = x[row]
        sb = xb.std(ddof=1) / np.sqrt(x.size)
        d = xb.mean() - x.mean()
        ts.append(d / sb if sb > 0 else (0.0 if abs(d) < 1e-12 else np.sign(d) * np.inf))
    q_low, q_high = np.quantile(ts, [0.025, 0.975])
    assert iv.low == pytest.approx(x.mean() - q_high * se, abs=1e-12)
    assert iv.high == pytest.approx(x.mean() - q_low * se, abs=1e-12)
    assert iv.method == "studentized"


def test_studentized_is_close_to_t_interval_on_large_normal_samples() -> None:
    x = np.random.default_rng(0).normal(1.0, 2.0, 400)
    iv = stats.interval(x, seed=0)
    t = sps.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert iv.low == pytest.approx(t.low, abs=0.03)
    assert iv.high == pytest.approx(t.high, abs=0.03)


def test_bca_matches_scipy() -> None:
    x = np.array([0.1, 0.9, 0.35, 0.2, 0.6, 0.05, 0.7, 0.3, 0.5, 0.15, 0.8, 0.4])
    ours = stats.bca_interval(x.size, lambda i: x[i].mean(), n_resamples=3000, seed=4)
    ref = sps.bootstrap((x,), np.mean, method="BCa", n_resamples=3000, rng=np.random.default_rng(4))
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_clopper_pearson_matches_statsmodels() -> None:
    from statsmodels.stats.proportion import proportion_confint

    for k, n in [(0, 10), (1, 10), (9, 10), (10, 10), (7, 23), (50, 100)]:
        iv = stats.clopper_pearson(k, n)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
        assert (iv.low, iv.high) == pytest.approx((lo, hi), abs=1e-12), (k, n)
        ref = sps.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        stats.clopper_pearson(11, 10)


def test_tost_and_one_sided_match_statsmodels_and_scipy() -> None:
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(2)
    for _ in range(5):
        a, b = rng.normal(0.5, 0.2, 10), rng.normal(0.45, 0.2, 10)
        p, _, _ = ttost_paired(a, b, -0.1, 0.1)
        assert stats.tost_p(a - b, 0.1) == pytest.approx(p, rel=1e-10)
        ref = sps.ttest_rel(a, b, alternative="greater").pvalue
        assert stats.one_sided_p(a - b) == pytest.approx(ref, rel=1e-10)


def test_holm_matches_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001, 0.04])
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-15)
    with_nan = stats.holm([0.01, np.nan, 0.04])
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx([0.02, 0.04])


def test_no_spread_is_reported_as_such() -> None:
    iv = stats.interval([0.0] * 10)
    assert np.isnan(iv.low) and np.isnan(iv.high) and not iv.spread
    assert "no spread over 10 seeds" in iv.format()
    bounded = stats.interval([0.0] * 10, bounds=(-1.0, 1.0))
    share = 1 - 0.025 ** (1 / 10)  # Clopper-Pearson upper bound for 0 of 10, two-sided 95%
    assert (bounded.low, bounded.high) == pytest.approx((-share, share))
    assert bounded.method == "no spread (bounded)"


def test_decide_outcomes() -> None:
    zeros, ones = np.zeros(10), np.ones(10)
    # every seed exactly 0: the exact bound (0.26 at 10 seeds, one-sided 95%) decides equivalence
    assert stats.decide(zeros, 0.1, bounds=(-1, 1)).outcome == "inconclusive"
    assert stats.decide(zeros, 0.3, bounds=(-1, 1)).outcome == "no effect"
    assert stats.decide(zeros, 0.1).outcome == "inconclusive"  # unbounded: no interval at all
    # the planner: +1 on every seed (the sign test, 2**-10)
    d = stats.decide(ones, 0.1, bounds=(-1, 1))
    assert d.outcome == "effect" and d.p_effect == pytest.approx(2.0**-10)
    assert stats.decide(np.ones(4), 0.1).outcome == "too few seeds"
    assert stats.decide(np.full(10, 0.5) + np.linspace(0, 0.1, 10), 0.1).outcome == "effect"
    assert stats.decide(np.linspace(-0.02, 0.02, 10), 0.1).outcome == "no effect"
    assert stats.decide(np.linspace(-0.5, 0.5, 10), 0.1).outcome == "inconclusive"
    assert stats.decide(np.linspace(-0.02, 0.02, 10), None).outcome == "inconclusive"


def test_an_effect_within_the_margin_is_no_effect() -> None:
    """Both tests reject (a small, consistent difference far inside the margin, like
    probe_incontext_v3's `left`: 0 on most seeds, up to 0.0013 on the rest): the margin is the smallest
    effect that counts, so the outcome is "no effect"; the same data against a margin below them are
    an effect."""
    d = np.r_[np.zeros(12), [0.0007, 0.001, 0.0007, 0.0013, 0.0003, 0.0007, 0.0007, 0.0003]]
    dec = stats.decide(d, 0.15)
    assert dec.p_effect < 0.05 and dec.p_equivalence < 0.05
    assert dec.outcome == "no effect" and stats.trivial_effect(dec.p_effect, dec.p_equivalence)
    assert stats.decide(d, 0.0001).outcome == "effect"
    assert stats.outcome(0.01, 0.01, 20) == "no effect" and stats.outcome(0.01, 0.2, 20) == "effect"
    assert stats.outcome(0.01, float("nan"), 20) == "effect" and stats.outcome(0.2, 0.2, 20) == "inconclusive"


def test_paired_differences_align_seeds() -> None:
    a = pd.Series([1.0, 2.0, 3.0], index=[2, 0, 1])
    b = pd.Series([0.5, 0.5, 1.0], index=[0, 1, 2])
    assert list(stats.paired_differences(a, b)) == [1.5, 2.5, 0.0]
    with pytest.raises(ValueError, match=r"seeds \[3\]"):
        stats.paired_differences(a, pd.Series([0.0, 0.0, 0.0, 0.0], index=[0, 1, 2, 3]))


def test_difference_interval_covers_for_independent_groups() -> None:
    """Two independent groups of 10 seeds (different spreads): coverage of the 95% interval of the
    difference of means within [0.93, 0.97] over 1,000 experiments."""
    rng = np.random.default_rng(9)
    hits = 0
    for _ in range(1000):
        a, b = rng.normal(0.5, 0.3, 10), rng.normal(0.2, 0.1, 10)
        iv = stats.difference_interval(a, b, n_resamples=999, seed=int(rng.integers(1 << 30)))
        hits += iv.low <= 0.3 <= iv.high
    assert 0.93 <= hits / 1000 <= 0.97, hits / 1000
    with pytest.raises(ValueError, match="at least two seeds"):
        stats.difference_interval([1.0], [0.0, 1.0])
    assert not stats.difference_interval([1.0, 1.0], [0.0, 0.0]).spread


def test_sparse_data_get_an_interval_within_the_bounds() -> None:
    """Nine seeds at 0 and one at 0.05: a third of the resamples have no spread and an infinite t*;
    the interval is finite (clipped to the metric's bounds) and never NaN."""
    x = np.array([0.0] * 9 + [0.05])
    iv = stats.interval(x, bounds=(-1.0, 1.0))
    assert iv.low <= x.mean() <= iv.high and iv.high == 1.0 and iv.low >= -1.0
    unbounded = stats.interval(x)
    assert unbounded.high == np.inf and not np.isnan(unbounded.low)


def test_nearly_degenerate_data_are_not_shown_equivalent() -> None:
    """Eight seeds at exactly 0 and two within 0.001 (probe 6's PPO trained in the open lagoon):
    Student's TOST alone calls this equivalent on the tiny spread (p ~ 1e-24), but a tenth of the
    resamples have no spread and t* = inf, so the bootstrap-t TOST does not; the decision is
    inconclusive. Data with a real spread inside the margin are still shown equivalent."""
    d = np.array([0, 0, 0.00033, 0, 0, 0, 0, -0.001, 0, 0])
    assert stats.tost_p(d, 0.1) < 1e-20
    assert stats.bootstrap_tost_p(d, 0.1, seed=0) > 0.05
    assert stats.decide(d, 0.1, bounds=(-1, 1)).outcome == "inconclusive"
    spread = np.linspace(-0.03, 0.03, 10)
    assert stats.bootstrap_tost_p(spread, 0.1) < 0.001
    assert stats.decide(spread, 0.1).outcome == "no effect"


def test_bootstrap_tost_matches_a_naive_loop() -> None:
    x = np.array([0.02, -0.01, 0.05, 0.0, 0.03, -0.02, 0.04, 0.01, 0.0, 0.02])
    n, b, margin = x.size, 3000, 0.05
    idx = np.random.default_rng(7).integers(0, n, size=(b, n))
    se = x.std(ddof=1) / np.sqrt(n)
    hits_low = hits_high = 0
    for row in idx:
        xb = x[row]
        sb = xb.std(ddof=1) / np.sqrt(n)
        dev = xb.mean() - x.mean()
        t = dev / sb if sb > 0 else (0.0 if abs(dev) < 1e-12 else np.sign(dev) * np.inf)
        hits_low += t >= (x.mean() + margin) / se
        hits_high += t <= (x.mean() - margin) / se
    naive = max((1 + hits_low) / (1 + b), (1 + hits_high) / (1 + b))
    assert stats.bootstrap_tost_p(x, margin, n_resamples=b, seed=7) == pytest.approx(naive, abs=1e-12)


def test_two_sample_tests_keep_their_level_and_have_power() -> None:
    """Independent groups of 10 seeds with unequal spreads: the one-sided two-sample bootstrap-t test
    rejects a true zero difference in at most 5% (+2 SE) of 600 experiments and finds a difference of
    0.3 most of the time; the two-sample TOST calls a true difference at the margin equivalent in at
    most 5% (+2 SE) and shows a true zero equivalent within a wide margin most of the time."""
    rng = np.random.default_rng(21)
    n_exp, se = 600, 2 * np.sqrt(0.05 * 0.95 / 600)
    draw = lambda shift: (rng.normal(shift, 0.3, 10), rng.normal(0.0, 0.1, 10))  # noqa: E731
    null = [stats.difference_p(*draw(0.0), n_resamples=999, seed=i) for i in range(n_exp)]
    assert np.mean(np.array(null) < 0.05) <= 0.05 + se
    power = [stats.difference_p(*draw(0.3), n_resamples=999, seed=i) for i in range(100)]
    assert np.mean(np.array(power) < 0.05) > 0.8
    at_margin = [stats.difference_tost_p(*draw(0.1), 0.1, n_resamples=999, seed=i) for i in range(n_exp)]
    assert np.mean(np.array(at_margin) < 0.05) <= 0.05 + se
    wide = [stats.difference_tost_p(*draw(0.0), 0.4, n_resamples=999, seed=i) for i in range(100)]
    assert np.mean(np.array(wide) < 0.05) > 0.8
    # no spread: the exact permutation bound when every a exceeds every b, else 1 / NaN
    assert stats.difference_p([1.0] * 10, [0.0] * 10) == pytest.approx(1 / 184756)
    assert stats.difference_p([0.0] * 10, [1.0] * 10) == 1.0
    assert np.isnan(stats.difference_tost_p([1.0] * 3, [1.0] * 3, 0.1))
    with pytest.raises(ValueError, match="at least two seeds"):
        stats.difference_p([1.0], [0.0, 1.0])


def test_spearman_permutation_p_matches_exact_enumeration() -> None:
    """rho equals scipy's (ties averaged); on 6 points the permutation p-value is within 0.01 of the
    exact share of the 720 permutations with rho* >= rho."""
    import itertools

    x = np.array([0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    y = np.array([0.1, 0.3, 0.2, 0.2, 0.6, 0.5])
    rho, p = stats.spearman_p(x, y, n_resamples=20_000, seed=4)
    assert rho == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    rank = lambda v: sps.rankdata(v)  # noqa: E731
    exact = np.mean(
        [sps.spearmanr(x, np.array(perm)).statistic >= rho - 1e-12 for perm in itertools.permutations(y)]
    )
    assert p == pytest.approx(exact, abs=0.01)
    assert rank(y)[2] == rank(y)[3]  # the example has a tie
