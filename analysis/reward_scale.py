"""Probe 5: which parts of PPO carry the reward's scale (reads the sweep written by python -m rledger.probes.reward_scale).

Usage: python analysis/reward_scale.py ROOT [--out DIR]   (ROOT: the --out folder of `rledger run`/`probe`)
Writes PNG and PDF figures and the CSV behind each into DIR (default ROOT/analysis).
"""

import argparse
import sys
from pathlib import Path

from rledger.analysis import reward_scale

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"{args.root}: no such folder; pass the --out folder of rledger run", file=sys.stderr)
        sys.exit(2)
    result = reward_scale.run(args.root, args.out or args.root / "analysis")
    for line in result.findings:
        print(line)
    for path in [*result.figures, *result.tables]:
        print(f"wrote {path}")
