"""Claim 4: probe outcomes with controls, intervals, rules and verdicts.

Usage: python analysis/probe_outcomes.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import probes
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(probes.run, __doc__)
