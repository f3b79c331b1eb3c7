"""Synthetic experiments for the calibration of rledger.stats (tests/test_stats.py and
benchmarks/stats_calibration.py, which prints the measured rates)."""

from __future__ import annotations

import numpy as np

from rledger import stats

N_EXPERIMENTS = 2000
SEEDS = 10


def normal_diffs(rng: np.random.Generator, mean: float, shape: tuple[int, int]) -> np.ndarray:
    return rng.normal(mean, 0.2, shape)


def probe_diffs(rng: np.random.Generator, mean: float, shape: tuple[int, int]) -> np.ndarray:
    """Per-seed paired differences as a probe measures them: each seed's policy has its own propensity
    to take the option (seeds differ a lot), raised by ``|mean|`` in one condition; 20 episodes per
    condition; the difference of the two shares. Its expectation is exactly ``mean``."""
    base = 0.8 * rng.beta(2, 5, shape)  # at most 0.8, so base + |mean| stays a probability
    raised = rng.binomial(20, base + abs(mean)) / 20
    other = rng.binomial(20, base) / 20
    return np.sign(mean) * (raised - other) if mean else raised - other


def exponential_diffs(rng: np.random.Generator, mean: float, shape: tuple[int, int]) -> np.ndarray:
    """Strongly skewed differences (a limitation case: no small-sample interval is exact here)."""
    return rng.exponential(1.0, shape) - 1.0 + mean


GENERATORS = {"normal": normal_diffs, "probe-like": probe_diffs}
SKEWED = {"exponential": exponential_diffs}


def coverage(name: str, mean: float = 0.1, seed: int = 7) -> tuple[float, float]:
    """(studentized, percentile) coverage of the 95% interval of the mean over N_EXPERIMENTS
    experiments of SEEDS seeds."""
    gen = {**GENERATORS, **SKEWED}[name]
    x = gen(np.random.default_rng(seed), mean, (N_EXPERIMENTS, SEEDS))
    low, high = stats.studentized_bounds(x, 0.95, seed=1)
    idx = np.random.default_rng(1).integers(0, SEEDS, size=(2000, SEEDS))
    plo, phi = np.quantile(x[:, idx].mean(2), [0.025, 0.975], axis=1)
    return float(np.mean((low <= mean) & (mean <= high))), float(np.mean((plo <= mean) & (mean <= phi)))


def outcome_rate(name: str, mean: float, margin: float, outcome: str, seed: int = 11) -> float:
    """Share of N_EXPERIMENTS experiments (true mean difference ``mean``) that :func:`stats.decide`
    calls ``outcome``."""
    gen = {**GENERATORS, **SKEWED}[name]
    x = gen(np.random.default_rng(seed), mean, (N_EXPERIMENTS, SEEDS))
    return float(np.mean([stats.decide(row, margin, n_resamples=99).outcome == outcome for row in x]))
