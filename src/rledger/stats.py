"""The statistics every probe, analysis and the report go through. Seeds are the unit.

- Intervals of a mean over seeds: the studentized bootstrap (bootstrap-t), which keeps its coverage at
  10 seeds where the percentile and BCa bootstraps do not (tests/test_stats.py simulates it). Other
  statistics of resampled seeds (a pooled accuracy, an AUC): BCa (:func:`bca_interval`).
- Paired designs: the same seed's policy plays both conditions with the same episode seeds, so the
  unit is the per-seed difference (:func:`paired_differences`), resampled as pairs.
- Tests on the mean per-seed difference ``d``: "there is an effect" by a one-sided t-test of d > 0;
  "there is no effect" only by an equivalence test (TOST, two one-sided t-tests) against a margin fixed
  in the spec before the run, which wins when both reject (an effect within the margin, smaller than
  the smallest effect that counts); anything else is inconclusive (:func:`decide`, :func:`outcome`).
- Independent groups of seeds (two trainings): the two-sample studentized bootstrap with Welch's
  standard error (:func:`difference_interval`, :func:`difference_p`, :func:`difference_tost_p`).
- Counts of seeds: exact binomial (Clopper-Pearson) bounds (:func:`clopper_pearson`).
- Several tests in one report: Holm's step-down adjustment (:func:`holm`).
- Data with no spread (every seed gave the same value) get no bootstrap interval: a resampling of equal
  values is a zero-width interval that says nothing about the next seed. Such data are reported as
  "no spread"; for a metric with known bounds the exact binomial bound on the share of seeds that
  would differ gives an honest (wide) interval instead (:func:`no_spread_interval`).

Data format of the probes: a tidy DataFrame with columns ``probe, condition, policy, seed, metric,
value`` (one row per seed and metric; a seed's value is already averaged over its episodes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

TIDY_COLUMNS = ("probe", "condition", "policy", "seed", "metric", "value")
MIN_SEEDS = 10  # fewer seeds give no verdict
ALPHA = 0.05
N_RESAMPLES = 9_999


@dataclass(frozen=True)
class Interval:
    """A point estimate and a two-sided confidence interval over ``n`` seeds. ``method`` names how the
    interval was obtained: ``studentized``, ``bca``, ``clopper-pearson``, ``no spread (bounded)``, or
    ``no spread`` (then ``low``/``high`` are NaN: there is no interval)."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "studentized"

    @property
    def spread(self) -> bool:
        return not self.method.startswith("no spread")

    def format(self, digits: int = 3, sign: bool = True) -> str:
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        est = f.format(self.estimate)
        if np.isnan(self.low) or np.isnan(self.high):
            return f"{est} (no spread over {self.n} seeds: no interval)"
        note = " (no spread; exact bound)" if not self.spread else ""
        return f"{est} [{f.format(self.low)}, {f.format(self.high)}]{note}"


def bootstrap_replicates(
    sizes: Sequence[int],
    statistic: Callable[..., Any],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """The one resampling of rledger: for groups of ``sizes`` seeds, each group's seeds are drawn with
    replacement, ``n_resamples`` times, the groups one after another from one generator seeded with
    ``seed``; returns ``statistic(*indices)`` for the ``(n_resamples, size)`` index arrays, the
    replicates (``(n_resamples,)``, or ``(n_resamples, m)`` for ``m`` statistics at once)."""
    rng = np.random.default_rng(seed)
    indices = [rng.integers(0, n, size=(n_resamples, n)) for n in sizes]
    return np.asarray(statistic(*indices), dtype=np.float64)


def _t_star(diff: np.ndarray, se: np.ndarray, tol: np.ndarray | float) -> np.ndarray:
    """Bootstrap-t values ``diff / se``. A resample without spread has ``se = 0``: its t is 0 when its
    deviation is within ``tol`` (rounding alone), else +-inf (it lies beyond every finite value), so
    such resamples widen the interval rather than vanish from it."""
    diff = np.where(np.abs(diff) <= tol, 0.0, diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.sign(diff) * np.inf)


def _quantiles(t: np.ndarray, probs: Sequence[float], axis: int | None = None) -> np.ndarray:
    """Linear quantiles of ``t``; between two equal infinite order statistics linear interpolation
    gives inf - inf = NaN, where the quantile is that infinity."""
    with np.errstate(invalid="ignore"):
        q = np.asarray(np.quantile(t, probs, axis=axis, method="linear"))
    bad = np.isnan(q)
    if bad.any():
        q[bad] = np.asarray(np.quantile(t, probs, axis=axis, method="lower"))[bad]
    return q


def _t_quantiles(x: np.ndarray, idx: np.ndarray, probs: Sequence[float]) -> np.ndarray:
    """Quantiles of the bootstrap-t statistic ``(mean* - mean) / se*`` over the resamples ``idx`` of
    every row of ``x`` (``(rows, n)``); returns ``(len(probs), rows)`` (:func:`_t_star`)."""
    n = x.shape[1]
    mean = x.mean(1)
    xb = x[:, idx]  # (rows, B, n)
    mb = xb.mean(2)
    sb = xb.std(2, ddof=1) / np.sqrt(n)
    # a resample whose values are all equal has se* = 0 exactly; its mean can still differ from the
    # sample mean by rounding alone, which is not a real deviation
    tol = 1e-12 * np.maximum(1.0, np.abs(x).max(1))[:, None]
    return _quantiles(_t_star(mb - mean[:, None], sb, tol), probs, axis=1)


def studentized_bounds(
    x: np.ndarray, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided studentized-bootstrap bounds of the mean of every row of ``x`` (``(rows, n)``), all
    rows resampled with the same seeded index draws (vectorized; the simulations use it directly)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    n = x.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    alpha = (1 - confidence) / 2
    rows = max(1, 2**24 // (n_resamples * n))  # rows per chunk: about 128 MB of resampled values
    q = np.concatenate(
        [_t_quantiles(x[i : i + rows], idx, [alpha, 1 - alpha]) for i in range(0, x.shape[0], rows)], axis=1
    )
    q_low, q_high = q
    mean = x.mean(1)
    se = x.std(1, ddof=1) / np.sqrt(n)
    with np.errstate(invalid="ignore"):  # inf * 0 when a row has no spread: handled by the caller
        return mean - q_high * se, mean - q_low * se


def no_spread_interval(
    value: float, n: int, bounds: tuple[float, float] | None, confidence: float = 0.95
) -> Interval:
    """All ``n`` seeds gave ``value``. With the metric's ``bounds`` known, the mean over seeds lies
    within ``value`` moved toward either bound by the share of seeds that could differ, which the exact
    binomial (Clopper-Pearson) upper bound on 0 of ``n`` caps: an honest, wide interval. Without bounds
    there is no interval (NaN ends)."""
    if bounds is None:
        return Interval(value, np.nan, np.nan, n, confidence, "no spread")
    lo, hi = bounds
    share = clopper_pearson(0, n, confidence).high
    return Interval(
        value,
        value - share * (value - lo),
        value + share * (hi - value),
        n,
        confidence,
        "no spread (bounded)",
    )


def interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> Interval:
    """The mean of ``values`` (one per seed) with its studentized-bootstrap interval, seeded. With no
    spread, :func:`no_spread_interval` (``bounds``: the range a value can take, if known)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("interval: no values; each condition needs at least one seed")
    if np.isnan(x).any():
        raise ValueError("interval: NaN among the per-seed values")
    est = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return no_spread_interval(est, int(x.size), bounds, confidence)
    low, high = studentized_bounds(x[None, :], confidence, n_resamples, seed)
    lo, hi = float(low[0]), float(high[0])
    if bounds is not None:  # a mean of values within bounds lies within them (the bootstrap-t can
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])  # exceed them, up to infinity, on sparse data)
    return Interval(est, lo, hi, int(x.size), confidence, "studentized")


def _two_sample_t(
    xa: np.ndarray, xb: np.ndarray, n_resamples: int, seed: int
) -> tuple[float, float, np.ndarray]:
    """``mean(a) - mean(b)``, its Welch standard error and the bootstrap-t replicates
    ``(est* - est) / se*`` (each group resampled on its own, :func:`bootstrap_replicates`)."""
    est = float(xa.mean() - xb.mean())
    se = float(np.sqrt(xa.var(ddof=1) / xa.size + xb.var(ddof=1) / xb.size))

    def t_star(ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        ra, rb = xa[ia], xb[ib]
        sb = np.sqrt(ra.var(1, ddof=1) / xa.size + rb.var(1, ddof=1) / xb.size)
        return _t_star(ra.mean(1) - rb.mean(1) - est, sb, 1e-12 * max(1.0, abs(est)))

    return est, se, bootstrap_replicates([xa.size, xb.size], t_star, n_resamples, seed)


def _groups(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, who: str
) -> tuple[np.ndarray, np.ndarray]:
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        raise ValueError(f"{who}: each group needs at least two seeds")
    if np.isnan(xa).any() or np.isnan(xb).any():
        raise ValueError(f"{who}: NaN among the per-seed values")
    return xa, xb


def difference_interval(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``mean(a) - mean(b)`` for two independent groups of seeds (e.g. two trainings), with the
    two-sample studentized bootstrap (each group resampled on its own, t* with the Welch standard
    error). For the same seeds under two conditions use :func:`paired_differences` and
    :func:`interval` instead."""
    xa, xb = _groups(a, b, "difference_interval")
    est, se, t = _two_sample_t(xa, xb, n_resamples, seed)
    if se == 0:
        return Interval(est, np.nan, np.nan, min(xa.size, xb.size), confidence, "no spread")
    alpha = (1 - confidence) / 2
    q_low, q_high = _quantiles(t, [alpha, 1 - alpha])
    return Interval(
        est, est - q_high * se, est - q_low * se, min(xa.size, xb.size), confidence, "studentized"
    )


def difference_p(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> float:
    """p-value of "mean(a) > mean(b)" for two independent groups of seeds: the one-sided two-sample
    studentized bootstrap, ``(1 + #{t* >= est / se}) / (1 + resamples)`` with the replicates of
    :func:`difference_interval` (the test that interval inverts). No spread in either group: 1 unless
    every a exceeds every b, then the exact permutation bound ``1 / C(n_a + n_b, n_a)``."""
    from math import comb

    xa, xb = _groups(a, b, "difference_p")
    est, se, t = _two_sample_t(xa, xb, n_resamples, seed)
    if se == 0:
        return 1.0 / comb(xa.size + xb.size, xa.size) if est > 0 else 1.0
    return float((1 + np.sum(t >= est / se)) / (1 + n_resamples))


def difference_tost_p(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    margin: float,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> float:
    """p-value of "-margin < mean(a) - mean(b) < margin" for two independent groups of seeds: two
    one-sided tests, with Welch's t and with the two-sample bootstrap-t; the largest of the four
    p-values (both versions must reject, as :func:`decide` asks of the paired TOST). No spread: NaN."""
    from scipy.stats import t as student

    if margin <= 0:
        raise ValueError(f"difference_tost_p: the margin must be > 0, got {margin}")
    xa, xb = _groups(a, b, "difference_tost_p")
    est, se, t = _two_sample_t(xa, xb, n_resamples, seed)
    if se == 0:
        return float("nan")
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    df = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))  # Welch-Satterthwaite
    welch = max(student.sf((est + margin) / se, df), student.cdf((est - margin) / se, df))
    boot_low = (1 + np.sum(t >= (est + margin) / se)) / (1 + n_resamples)
    boot_high = (1 + np.sum(t <= (est - margin) / se)) / (1 + n_resamples)
    return float(max(welch, boot_low, boot_high))


def spearman_p(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Spearman's rho of ``x`` and ``y`` (average ranks for ties) and the p-value of "rho > 0" by a
    seeded permutation test: ``(1 + #{rho* >= rho}) / (1 + resamples)`` over random permutations of
    ``y``."""
    from scipy.stats import rankdata

    rx = rankdata(np.asarray(x, dtype=np.float64))
    ry = rankdata(np.asarray(y, dtype=np.float64))
    if rx.size != ry.size or rx.size < 3:
        raise ValueError("spearman_p: x and y need the same length, at least 3")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = np.sqrt((rx**2).sum() * (ry**2).sum())
    if norm == 0:
        return float("nan"), 1.0
    rho = float(rx @ ry / norm)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.broadcast_to(ry, (n_resamples, ry.size)), axis=1)
    rho_star = perms @ rx / norm
    return rho, float((1 + np.sum(rho_star >= rho - 1e-12)) / (1 + n_resamples))


def bca_intervals(
    n: int,
    statistic: Callable[[np.ndarray], Sequence[float]],
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[Interval]:
    """BCa intervals of statistics of ``n`` resampled seeds: ``statistic(idx)`` takes an index array
    of seeds (with repeats) and returns m numbers (e.g. an accuracy and an AUC pooled over the seeds'
    rows); one resampling serves all m. Bias correction from the bootstrap replicates, acceleration
    from the jackknife over seeds (Efron 1987), as ``scipy.stats.bootstrap(method="BCa")`` computes
    them. Replicates that are NaN (e.g. an AUC of a resample with one class) are left out."""
    from scipy.stats import norm

    est = np.asarray(statistic(np.arange(n)), dtype=np.float64)
    if n < 2:  # one seed: nothing to resample
        return [Interval(float(e), np.nan, np.nan, n, confidence, "no spread") for e in est]
    reps = bootstrap_replicates([n], lambda i: [statistic(row) for row in i], n_resamples, seed)
    jack_all = np.array([statistic(np.delete(np.arange(n), i)) for i in range(n)], dtype=np.float64)
    alpha = (1 - confidence) / 2
    z = norm.ppf([alpha, 1 - alpha])
    out = []
    for j in range(est.size):
        r = reps[:, j][~np.isnan(reps[:, j])]
        jack = jack_all[:, j][~np.isnan(jack_all[:, j])]
        if r.size == 0 or np.all(r == r[0]) or np.isnan(est[j]):
            out.append(Interval(float(est[j]), np.nan, np.nan, n, confidence, "no spread"))
            continue
        z0 = norm.ppf((r < est[j]).mean() + 0.5 * (r == est[j]).mean())
        d = jack.mean() - jack
        denom = 6.0 * (d**2).sum() ** 1.5
        a = (d**3).sum() / denom if denom > 0 else 0.0
        probs = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        low, high = np.quantile(r, probs)
        out.append(Interval(float(est[j]), float(low), float(high), n, confidence, "bca"))
    return out


def bca_interval(
    n: int,
    statistic: Callable[[np.ndarray], float],
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """:func:`bca_intervals` of one statistic."""
    return bca_intervals(n, lambda i: [statistic(i)], confidence, n_resamples, seed)[0]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact binomial interval of a share of seeds (``k`` of ``n``), two-sided; the estimate is k/n."""
    from scipy.stats import beta

    if not 0 <= k <= n or n < 1:
        raise ValueError(f"clopper_pearson: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(k / n, low, high, n, confidence, "clopper-pearson")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    order = np.argsort(q, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adjusted, 1.0)
    out[ok] = res
    return out


def paired_differences(a: pd.Series, b: pd.Series) -> pd.Series:
    """``a - b`` seed by seed (both indexed by seed); refuses seeds present in one condition only."""
    if set(a.index) != set(b.index):
        only = sorted(set(a.index) ^ set(b.index))
        raise ValueError(f"paired_differences: seeds {only} were evaluated in one condition only")
    return (a - b.reindex(a.index)).sort_index()


def one_sided_p(d: np.ndarray) -> float:
    """p-value of "mean d > 0" (one-sample t-test, alternative greater). No spread: the exact sign
    test when every d is positive (0.5**n), else 1."""
    from scipy.stats import ttest_1samp

    d = np.asarray(d, dtype=np.float64)
    if np.all(d == d[0]):
        return float(0.5**d.size) if d[0] > 0 else 1.0
    return float(ttest_1samp(d, 0.0, alternative="greater").pvalue)


def tost_p(d: np.ndarray, margin: float) -> float:
    """p-value of "-margin < mean d < margin" by two one-sided t-tests (the larger of the two p-values;
    statsmodels' ``ttost_paired``). No spread: NaN (the t-test has no variance to work with; see
    :func:`decide`, which then uses the bounded no-spread interval)."""
    from scipy.stats import ttest_1samp

    d = np.asarray(d, dtype=np.float64)
    if margin <= 0:
        raise ValueError(f"tost_p: the margin must be > 0, got {margin}")
    if np.all(d == d[0]):
        return float("nan")
    p_low = ttest_1samp(d, -margin, alternative="greater").pvalue
    p_high = ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(p_low, p_high))


def bootstrap_tost_p(d: np.ndarray, margin: float, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """p-value of "-margin < mean d < margin" by the two one-sided tests with the bootstrap-t
    distribution (that of the studentized interval, seeded) in place of Student's t: the larger of
    ``P*(t* >= (mean + margin) / se)`` and ``P*(t* <= (mean - margin) / se)``, each counted as
    ``(1 + hits) / (1 + resamples)``. Where the data are nearly degenerate (most seeds exactly equal),
    resamples without spread give t* = +-inf and this p-value stays large, where Student's t, fed the
    tiny spread, would call the mean equivalent. No spread: NaN, as :func:`tost_p`."""
    d = np.asarray(d, dtype=np.float64)
    if margin <= 0:
        raise ValueError(f"bootstrap_tost_p: the margin must be > 0, got {margin}")
    if np.all(d == d[0]):
        return float("nan")
    n = d.size
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    xb = d[idx]
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    t_star = _t_star(xb.mean(1) - d.mean(), xb.std(1, ddof=1) / np.sqrt(n), tol)
    se = d.std(ddof=1) / np.sqrt(n)
    p_low = (1 + np.sum(t_star >= (d.mean() + margin) / se)) / (1 + n_resamples)
    p_high = (1 + np.sum(t_star <= (d.mean() - margin) / se)) / (1 + n_resamples)
    return float(max(p_low, p_high))


@dataclass(frozen=True)
class Decision:
    """The outcome of testing a mean per-seed difference: ``effect`` (one-sided test: mean > 0),
    ``no effect`` (TOST within +-margin), ``inconclusive``, or ``too few seeds``. ``p_effect`` and
    ``p_equivalence`` are unadjusted; the report applies :func:`holm` over its decisions."""

    outcome: str
    interval: Interval
    margin: float | None
    p_effect: float
    p_equivalence: float
    alpha: float = ALPHA

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, meaning "none", as None)."""
        iv = self.interval
        d = {
            "outcome": self.outcome, "difference": iv.estimate, "low": iv.low, "high": iv.high,
            "interval_method": iv.method, "n_seeds": iv.n, "margin": self.margin,
            "p_effect": self.p_effect, "p_equivalence": self.p_equivalence,
        }  # fmt: skip
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in d.items()}


def outcome(p_effect: float, p_equivalence: float, n: int, alpha: float = ALPHA) -> str:
    """ "no effect" when the equivalence test rejects, whether or not the test of an effect rejects too:
    the margin, fixed before the run, is the smallest effect that counts, and an effect shown to lie
    within it (a significant but trivial one) is no effect in that sense; else "effect" when the test
    of an effect rejects; else "inconclusive". (Until 2026-12-03 an effect came first; changed when
    probe_incontext_v3's run gave the first case where both rejected: docs/experiments.md.)"""
    if n < MIN_SEEDS:
        return "too few seeds"
    if not np.isnan(p_equivalence) and p_equivalence < alpha:
        return "no effect"
    if p_effect < alpha:
        return "effect"
    return "inconclusive"


def trivial_effect(p_effect: float, p_equivalence: float, alpha: float = ALPHA) -> bool:
    """Both tests reject: an effect is shown, and shown to lie within the margin."""
    return bool(p_effect < alpha and not np.isnan(p_equivalence) and p_equivalence < alpha)


def decide(
    d: Sequence[float] | np.ndarray,
    margin: float | None,
    bounds: tuple[float, float] | None = None,
    alpha: float = ALPHA,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> Decision:
    """Test per-seed differences ``d``: "no effect" if the TOST against ``margin`` (fixed before the
    run) rejects at ``alpha``, with Student's t and with the bootstrap-t (:func:`bootstrap_tost_p`;
    ``p_equivalence`` is the larger of the two); else "effect" if a one-sided test of mean d > 0
    rejects; else "inconclusive" (:func:`outcome`); "too few seeds" below :data:`MIN_SEEDS`. ``bounds``: the range a
    difference can take (e.g. (-1, 1) for a difference of shares), used when the data have no spread:
    then the exact-binomial interval decides equivalence (it lies within +-margin or it does not).
    ``seed`` and ``n_resamples`` size the bootstrap of the interval and of the second TOST."""
    x = np.asarray(d, dtype=np.float64)
    if x.size == 0:
        raise ValueError("decide: no per-seed differences")
    shown = interval(x, seed=seed, bounds=bounds, n_resamples=n_resamples)
    p_eff = one_sided_p(x)
    if margin is None:
        p_eq = float("nan")
    elif shown.spread:
        # both TOSTs must reject (an intersection-union test, level alpha): Student's t alone calls
        # nearly degenerate data equivalent on their tiny spread (8 of 10 seeds at exactly 0)
        p_eq = max(tost_p(x, margin), bootstrap_tost_p(x, margin, n_resamples, seed))
    elif bounds is not None:
        # no spread, bounded: the exact interval at 1 - 2 alpha (the TOST's) inside +-margin is the
        # equivalence test at alpha; reported as 0 (equivalent) or 1 (not), there being no continuous
        # p-value
        iv = no_spread_interval(float(x[0]), x.size, bounds, 1 - 2 * alpha)
        p_eq = 0.0 if (-margin < iv.low and iv.high < margin) else 1.0
    else:
        p_eq = float("nan")
    return Decision(outcome(p_eff, p_eq, x.size, alpha), shown, margin, p_eff, p_eq, alpha)


def summarize(
    tidy: pd.DataFrame, confidence: float = 0.95, seed: int = 0, bounds: Callable[[str], Any] | None = None
) -> pd.DataFrame:
    """Mean and interval over seeds of every (probe, condition, policy, metric); ``bounds(metric)``
    gives a metric's range (for data with no spread), e.g. :func:`metric_bounds`."""
    missing = set(TIDY_COLUMNS) - set(tidy.columns)
    if missing:
        raise ValueError(
            f"summarize: the table lacks columns {sorted(missing)}; expected {list(TIDY_COLUMNS)}"
        )
    bounds = bounds or metric_bounds
    rows = []
    for key, g in tidy.groupby(["probe", "condition", "policy", "metric"], sort=True):
        iv = interval(g["value"].to_numpy(), confidence=confidence, seed=seed, bounds=bounds(key[3]))
        rows.append({**dict(zip(["probe", "condition", "policy", "metric"], key, strict=True)),
                     "mean": iv.estimate, "low": iv.low, "high": iv.high, "n_seeds": iv.n,
                     "interval_method": iv.method})  # fmt: skip
    return pd.DataFrame(rows)


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range of an evaluation metric's per-seed value (:mod:`rledger.probes.evaluate`): shares of
    episodes or steps (``any_``, ``never_``, ``share_``, ``ended_``) lie in [0, 1]; other metrics are
    unbounded here (None)."""
    return (0.0, 1.0) if metric.startswith(("any_", "never_", "share_", "ended_")) else None


def difference_bounds(metric: str) -> tuple[float, float] | None:
    """The range of a difference of two values of ``metric``."""
    b = metric_bounds(metric)
    return None if b is None else (b[0] - b[1], b[1] - b[0])
