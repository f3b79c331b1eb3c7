"""Claim 1: per-sample update size against |advantage|, variance shares, clipping.

Usage: python analysis/reward_as_learning_rate.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import learning_rate
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(learning_rate.run, __doc__)
