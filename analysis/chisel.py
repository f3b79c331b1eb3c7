"""The chiselling timeline (experiments/chisel_lagoon.yaml, chisel_tamper.yaml): per seed, the first
entry into the newly opened option, the first positive reinforcement of entering it, the cumulative
reinforcement of entering and adoption over training, aligned at the first positive reinforcement;
the specs' pre-registered tests C1-C3.

Usage: python analysis/chisel.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import chisel
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(chisel.run, __doc__)
