"""Persistence of a slightly worse habit (experiments/habit_persist.yaml): the detour rate after the
opening's bonus ends, against a control trained without the opening, the persistence time, and the
self-reinforcement each route receives while the habit lasts; the spec's pre-registered tests H1-H2.

Usage: python analysis/habit.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

from rledger.analysis import habit
from rledger.analysis.common import script_main

if __name__ == "__main__":
    script_main(habit.run, __doc__)
