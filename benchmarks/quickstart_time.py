"""Wall time of the whole quickstart (training, probes with controls, report) against its budget.

Runs ``rledger quickstart`` into a fresh folder with the default 2 workers, prints the seconds against
the suite's ``budget_seconds`` and, with ``--record``, stores the measurement in
``benchmarks/quickstart_measured.json`` (read by the test that keeps the suite within its budget).

Usage: python benchmarks/quickstart_time.py [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from rledger.suite import default_suite_path, load_suite

    suite = load_suite(default_suite_path())
    out = Path(tempfile.mkdtemp()) / "qs"
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rledger.cli", "quickstart", "--out", str(out)], check=True)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    print(f"quickstart: {seconds:.0f} s for {suite.total_timesteps:,} env steps; budget {suite.budget_seconds:.0f} s "
          f"(ratio {seconds / suite.budget_seconds:.2f})")  # fmt: skip
    if args.record:
        record = {"seconds": round(seconds, 1), "env_steps": suite.total_timesteps, "cpus": os.cpu_count(),
                  "machine": platform.machine(), "python": platform.python_version(),
                  "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        (HERE / "quickstart_measured.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
