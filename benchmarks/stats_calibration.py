"""Calibration of rledger.stats at 10 seeds, as tests/test_stats.py checks it, printed as a table:
coverage of the 95% interval of a mean (studentized bootstrap, and the percentile bootstrap it
replaced), the rate of a false "no effect" at a true effect equal to the margin, and of a false
"effect" at a true effect of 0. 2,000 synthetic experiments per cell.

    python benchmarks/stats_calibration.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from stats_sim import GENERATORS, N_EXPERIMENTS, SEEDS, SKEWED, coverage, outcome_rate  # noqa: E402


def main() -> None:
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
