"""A query across many runs against the same query over one run of the same total size.

Writes real ledgers with the schema's columns (random values) through ``LedgerWriter``: ``--runs``
runs of ``--rollouts`` rollouts each under ``<tmp>/many`` (as ``rledger run`` lays them out), and one
run of ``runs * rollouts`` rollouts under ``<tmp>/one``. Then times, interleaved ``--repeats`` times,
the same aggregate over the ``samples`` view of :class:`rledger.Ledgers` (grouped by experiment,
variant, seed and epoch) on each, opening the views included, and prints the ratio many / one (wall and
all-threads CPU) with a bootstrap interval over the repeats. Also printed: the same figures computed
with a Python loop over per-run :class:`rledger.Ledger` objects (what the analyses did before).
Target: many / one <= 2x.

    python benchmarks/bench_ledgers.py [--runs 100] [--rollouts 4] [--rows 2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from rledger import Ledger, Ledgers
from rledger.ledger import schema
from rledger.ledger.writer import LedgerWriter

QUERY = (
    "SELECT experiment, variant, seed, epoch, count(*) AS n, avg(abs(advantage_used)) AS adv, "
    "avg(pg_grad_norm) AS g, regr_r2(ln(pg_grad_norm), ln(abs(advantage_used))) AS r2 "
    "FROM samples WHERE pg_grad_norm > 0 AND advantage_used <> 0 GROUP BY ALL ORDER BY ALL"
)


def fake_columns(rollout: int, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for f in schema.arrow_schema("samples", ()):
        if f.name == "rollout":
            cols[f.name] = np.full(rows, rollout)
        elif pa.types.is_boolean(f.type):
            cols[f.name] = rng.random(rows) < 0.1
        elif pa.types.is_integer(f.type):
            cols[f.name] = rng.integers(0, 8, rows)
        elif pa.types.is_list(f.type):
            cols[f.name] = rng.integers(0, 4, (rows, 1)).astype(np.float32)
        else:
            cols[f.name] = rng.lognormal(size=rows) * np.sign(rng.normal(size=rows))
    cols["pg_grad_norm"] = np.abs(cols["pg_grad_norm"])
    return cols


def write_run(folder: Path, rollouts: int, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = LedgerWriter(folder / "ledger")
    info = {"rollouts_written": rollouts, "num_timesteps": rollouts * rows, "n_envs": 1,
            "config": {"n_steps": rows}, "info_keys": []}  # fmt: skip
    writer.open(info)
    for k in range(rollouts):
        tbl = writer.arrow_table("samples", fake_columns(k, rows, rng))
        writer.write_arrow("samples", k, tbl)
        writer.write_manifest(k, {"samples": tbl.num_rows})
    (folder / "DONE").write_text("{}")


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (10_000, len(a)))
    r = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100, help="runs in the many-runs folder")
    ap.add_argument("--rollouts", type=int, default=4, help="rollouts per run there")
    ap.add_argument("--rows", type=int, default=2048, help="samples rows per rollout")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timings of each")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.runs):
            write_run(root / "many" / "exp" / f"v{i % 2}" / f"seed={i // 2}", args.rollouts, args.rows, i)
        write_run(root / "one" / "exp" / "v0" / "seed=0", args.runs * args.rollouts, args.rows, 0)

        def many() -> int:
            led = Ledgers(root / "many")
            out = len(led.sql(QUERY))
            led.close()
            return out

        def one() -> int:
            led = Ledgers(root / "one")
            out = len(led.sql(QUERY))
            led.close()
            return out

        def loop() -> int:
            n = 0
            for run in sorted((root / "many").glob("*/*/seed=*")):
                led = Ledger(run)
                n += len(led.sql(QUERY.replace("experiment, variant, seed, ", "")))
                led.close()
            return n

        assert many() == one() * args.runs > 0  # one row per (run, epoch); warms the page cache
        loop()
        times: dict[str, list[tuple[float, float]]] = {"many": [], "one": [], "loop": []}
        for _ in range(args.repeats):
            for name, fn in (("many", many), ("one", one), ("loop", loop)):
                times[name].append(timed(fn))
        arr = {k: np.array(v) for k, v in times.items()}
        out = {
            "runs": args.runs,
            "rows_total": args.runs * args.rollouts * args.rows,
            "median_wall_s": {k: round(float(np.median(v[:, 0])), 3) for k, v in arr.items()},
            "median_cpu_s": {k: round(float(np.median(v[:, 1])), 3) for k, v in arr.items()},
        }
        for name in ("many", "loop"):
            lo, hi = bootstrap_ratio(arr[name][:, 0], arr["one"][:, 0])
            out[f"{name}/one wall"] = round(
                float(np.median(arr[name][:, 0]) / np.median(arr["one"][:, 0])), 3
            )
            out[f"{name}/one wall 95% CI"] = [round(lo, 3), round(hi, 3)]
            out[f"{name}/one cpu"] = round(float(np.median(arr[name][:, 1]) / np.median(arr["one"][:, 1])), 3)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
