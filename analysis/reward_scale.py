"""Probe 5: which parts of PPO carry the reward's scale (reads the sweep written by python -m rledger.probes.reward_scale).

Usage: python analysis/reward_scale.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import reward_scale
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(reward_scale.run, __doc__)
