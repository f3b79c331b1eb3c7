"""Claim 5: return and hidden performance over training, mean and 95% bootstrap band over seeds.

Usage: python analysis/learning_curves.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import curves
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(curves.run, __doc__)
