"""The analyses and the report over a million-step run (about 10^7 samples rows at SB3 defaults).

A real instrumented run at SB3 defaults (``--env``, default the boat race, so that every claim runs:
the reinforcement maps and the history analysis join samples with transitions) (``--seed-steps`` env steps, every table) is
trained once; its rollouts are then replicated, with their ``rollout`` numbers shifted, until the run
holds ``--steps`` env steps (real rows and real value distributions, a million-step run's volume).
Measured in the same process, the same data:
  1. ``rledger report`` (every claim) from a cold start: seconds and peak RSS (target: <= 30 s).
  2. The same numbers computed by loading the samples table into pandas first: seconds and peak RSS.
The aggregation never loads a whole table: DuckDB scans the Parquet files.

Usage: python benchmarks/bench_report_scale.py [--steps 1000000] [--seed-steps 20480] [--env ID] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def make_run(root: Path, steps: int, seed_steps: int, env_id: str) -> Path:
    from rledger.experiments import plan_runs, validate
    from rledger.experiments.run import command_line, execute

    raw = {"name": "scale", "env": {"id": env_id}, "seeds": [0], "total_timesteps": seed_steps,
           "eval": {"episodes": 1}}  # fmt: skip
    spec = validate(raw, "bench")
    job = plan_runs(spec, root, overwrite=False)[0]
    execute(job.config, job.path, command_line())
    ledger = job.path / "ledger"
    info = json.loads((ledger / "run.json").read_text())
    per = int(info["config"]["n_steps"]) * int(info["n_envs"])
    seed_rollouts = int(info["rollouts_written"])
    target = steps // per
    for table in ("transitions", "samples", "updates", "episodes"):
        parts = sorted((ledger / table).glob("part-*.parquet"))
        originals = {int(p.stem.split("-")[1]): pq.read_table(p) for p in parts}
        for r in range(seed_rollouts, target):
            src = originals[r % seed_rollouts] if (r % seed_rollouts) in originals else None
            if src is None:
                continue
            col = src.schema.get_field_index("rollout")
            shifted = src.set_column(
                col, src.schema.field(col), pa.array([r] * src.num_rows, src.schema.field(col).type)
            )
            pq.write_table(shifted, ledger / table / f"part-{r:06d}.parquet")
    info["rollouts_written"] = target
    info["num_timesteps"] = target * per
    (ledger / "run.json").write_text(json.dumps(info, indent=2))
    return job.path


PANDAS = r"""
import sys, time, json, resource
import numpy as np, pandas as pd
from rledger.ledger import Ledger
t = time.perf_counter()
led = Ledger(sys.argv[1])
s = led.samples()
n = int(led.run_info["rollouts_written"])
s["phase"] = np.minimum(s.rollout.to_numpy() * 5 // n, 4)
ok = s[~s.clipped & (s.advantage_used != 0) & (s.pg_grad_norm > 0) & (s.score_norm > 0)]
r2 = {}
for ph, g in ok.groupby("phase"):
    y = np.log(g.pg_grad_norm.to_numpy(np.float64))
    for name, x in (("adv", np.log(np.abs(g.advantage_used.to_numpy(np.float64)))), ("score", np.log(g.score_norm.to_numpy(np.float64))), ("ratio", np.log(g.ratio.to_numpy(np.float64)))):
        r2[(ph, name)] = np.corrcoef(x, y)[0, 1] ** 2
clip = s.groupby("phase").clipped.mean()
ep = led.episodes()
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(s),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

REPORT = r"""
import sys, time, json, resource
from rledger.report import build_report
t = time.perf_counter()
r = build_report(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--seed-steps", type=int, default=20_480)
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument(
        "--env", default="rledger/BoatRace-v0", help="a gridworld runs every claim, maps included"
    )
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        path = make_run(root, args.steps, args.seed_steps, args.env)
        import duckdb

        glob = f"{path}/ledger/samples/*.parquet"
        rows = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]
        print(f"run: {rows:,} samples rows ({args.steps:,} steps), built in {time.perf_counter() - t:.0f} s")
        rep = json.loads(subprocess.run([sys.executable, "-c", REPORT, str(root), str(root / "report")],
                                        capture_output=True, text=True, check=True).stdout)  # fmt: skip
        pdr = json.loads(subprocess.run([sys.executable, "-c", PANDAS, str(path / "ledger")],
                                        capture_output=True, text=True, check=True).stdout)  # fmt: skip
        print(
            f"rledger report (DuckDB):      {rep['seconds']:6.1f} s, peak RSS {rep['peak_rss_mb']:7.0f} MB  (target <= 30 s)"
        )
        print(
            f"load samples into pandas first: {pdr['seconds']:6.1f} s, peak RSS {pdr['peak_rss_mb']:7.0f} MB"
        )
        print(
            f"ratio report / pandas: time {rep['seconds'] / pdr['seconds']:.2f}, memory {rep['peak_rss_mb'] / pdr['peak_rss_mb']:.2f}"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
