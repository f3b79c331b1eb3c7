"""Claim 3: does reinforcement history predict the final policy? Includes the boat-race tie-break.

Usage: python analysis/history.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import history
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(history.run, __doc__)
