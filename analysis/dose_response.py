"""The goal-diversity dose-response (experiments/relocate_dose.yaml): reaching the relocated goal and
ending in the old region against the share of training episodes with the goal anywhere, with the
spec's three pre-registered tests.

Usage: python analysis/dose_response.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import dose
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(dose.run, __doc__)
