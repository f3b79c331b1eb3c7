"""Claim 2: cumulative self_reinforcement per (cell, action), early and whole run, beside the final policy.

Usage: python analysis/reinforcement_maps.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import gridmaps
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(gridmaps.run, __doc__)
