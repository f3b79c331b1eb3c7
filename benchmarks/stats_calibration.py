"""Calibration of rledger.stats at 10 seeds, as tests/test_stats.py checks it, printed as a table:
coverage of the 95% interval of a mean (studentized bootstrap, and the percentile bootstrap it
replaced), the rate of a false "no effect" at a true effect equal to the margin, and of a false
"effect" at a true effect of 0. 2,000 synthetic experiments per cell.

With ``--floor``, the power of "no effect" for a policy that behaves alike in both conditions at a
floor or ceiling (a probe design question, not a calibration): each seed's paired difference of a
share is exactly 0 with probability q, else N(0, 0.02); the share of experiments
:func:`rledger.stats.decide` calls "no effect", by seeds, margin and q (``--experiments`` per cell).
Data with no spread are decided by the exact binomial bound, data with some by both TOSTs; nearly
degenerate data (most seeds exactly equal) give the bootstrap-t resamples with no spread, and that
test rarely rejects.

    python benchmarks/stats_calibration.py [--floor [--experiments 200]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from stats_sim import GENERATORS, N_EXPERIMENTS, SEEDS, SKEWED, coverage, outcome_rate  # noqa: E402


def floor_power(experiments: int) -> None:
    from rledger import stats

    qs = (1.0, 0.95, 0.8, 0.5, 0.0)
    print(f"P('no effect') when every seed's true difference is 0; {experiments} experiments per cell")
    print("| seeds | margin | " + " | ".join(f"q = {q:g}" for q in qs) + " |")
    print("|---|---|" + "---|" * len(qs))
    rng = np.random.default_rng(0)
    for n in (10, 20, 30):
        for margin in (0.1, 0.15):
            cells = []
            for q in qs:
                d = np.where(rng.random((experiments, n)) < q, 0.0, rng.normal(0.0, 0.02, (experiments, n)))
                hits = sum(
                    stats.decide(row, margin, bounds=(-1.0, 1.0), n_resamples=999).outcome == "no effect"
                    for row in d
                )
                cells.append(f"{hits / experiments:.2f}")
            print(f"| {n} | {margin:g} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--floor", action="store_true")
    ap.add_argument("--experiments", type=int, default=200)
    args = ap.parse_args()
    if args.floor:
        floor_power(args.experiments)
        return
    print(f"{N_EXPERIMENTS} experiments of {SEEDS} seeds per cell; margin 0.1")
    print("| data | coverage, studentized | coverage, percentile | false 'no effect' at +margin |"
          " at -margin | false 'effect' at 0 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in [*GENERATORS, *SKEWED]:
        stud, perc = coverage(name)
        plus = outcome_rate(name, 0.1, 0.1, "no effect", seed=12)
        minus = outcome_rate(name, -0.1, 0.1, "no effect", seed=10)
        zero = outcome_rate(name, 0.0, 0.1, "effect", seed=3)
        print(f"| {name} | {stud:.3f} | {perc:.3f} | {plus:.3f} | {minus:.3f} | {zero:.3f} |")


if __name__ == "__main__":
    main()
