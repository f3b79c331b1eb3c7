"""The ledger's Parquet options against the alternatives, on a real ledger's tables.

Trains one short InstrumentedPPO run on CartPole-v1 (SB3 defaults) with every table on (the default
four, ``momentum``, and 20 watched pairs for ``influence`` and ``influence_steps``), reads each table
back whole, and writes it again in memory with each set of options, interleaved, best of
``--repeats``: the ledger's own (``rledger.ledger.writer.PARQUET_OPTIONS``), the options before
2026-12-03 (the same with pyarrow's default dictionary encoding) and pyarrow's defaults (snappy).
Prints per table the write CPU time per row, the bytes per row, and the ratios of the ledger's options
to each alternative; then the time to read the samples table back with DuckDB (an aggregate) and with
pandas, for the ledger's options against the dictionary-encoded file.

    python benchmarks/bench_parquet.py [--steps 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("transitions", "samples", "updates", "episodes", "momentum", "influence", "influence_steps")


def options() -> dict[str, dict[str, object]]:
    from rledger.ledger.writer import PARQUET_OPTIONS

    return {
        "ledger": dict(PARQUET_OPTIONS),
        "dictionary": {**PARQUET_OPTIONS, "use_dictionary": True},
        "pyarrow default": {"row_group_size": PARQUET_OPTIONS["row_group_size"]},
    }


def write_cpu(tbl: pa.Table, opts: dict[str, object]) -> tuple[float, int]:
    buf = io.BytesIO()
    c0 = time.process_time()
    pq.write_table(tbl, buf, **opts)  # type: ignore[arg-type]
    return time.process_time() - c0, buf.tell()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import duckdb
    import torch as th
    from bench_overhead import NEW_INSTRUMENTS

    from rledger import InstrumentedPPO

    th.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    model = InstrumentedPPO(
        "MlpPolicy", "CartPole-v1", seed=0, device="cpu", ledger=tmp / "run", **NEW_INSTRUMENTS
    )  # type: ignore[arg-type]
    model.learn(args.steps)
    opts = options()
    print(
        f"{args.steps} CartPole steps, every table; write CPU per row (best of {args.repeats}), bytes per row"
    )
    print(
        "| table | rows | "
        + " | ".join(f"{k}: ns/row, B/row" for k in opts)
        + " | ledger / dictionary: CPU, bytes |"
    )
    print("|---|---|" + "---|" * len(opts) + "---|")
    for table in TABLES:
        files = sorted((tmp / "run" / table).glob("*.parquet"))
        tbl = pa.concat_tables([pq.read_table(f) for f in files])
        best = {k: (float("inf"), 0) for k in opts}
        for _ in range(args.repeats):
            for k, o in opts.items():
                cpu, size = write_cpu(tbl, o)
                best[k] = (min(best[k][0], cpu), size)
        n = tbl.num_rows
        cells = " | ".join(f"{best[k][0] / n * 1e9:.0f}, {best[k][1] / n:.2f}" for k in opts)
        led, dic = best["ledger"], best["dictionary"]
        print(f"| {table} | {n} | {cells} | {led[0] / dic[0]:.2f}x, {led[1] / dic[1]:.2f}x |")

    samples = pq.read_table(tmp / "run" / "samples")
    paths = {}
    for k in ("ledger", "dictionary"):
        paths[k] = tmp / f"samples_{k.replace(' ', '_')}.parquet"
        pq.write_table(samples, paths[k], **opts[k])  # type: ignore[arg-type]
    query = (
        "SELECT rollout, count(*), avg(abs(advantage_used)), regr_r2(ln(pg_grad_norm), ln(abs(advantage_used))) "
        "FROM '{}' WHERE pg_grad_norm > 0 AND advantage_used <> 0 GROUP BY rollout"
    )
    read = {k: [float("inf"), float("inf")] for k in paths}
    for _ in range(args.repeats):
        for k, p in paths.items():
            t0 = time.perf_counter()
            duckdb.sql(query.format(p)).fetchall()
            t1 = time.perf_counter()
            pq.read_table(p).to_pandas()
            t2 = time.perf_counter()
            read[k] = [min(read[k][0], t1 - t0), min(read[k][1], t2 - t1)]
    print(
        f"samples read back ({samples.num_rows} rows, best of {args.repeats}): DuckDB aggregate "
        f"{read['ledger'][0] * 1e3:.1f} ms against {read['dictionary'][0] * 1e3:.1f} ms with dictionaries "
        f"({read['ledger'][0] / read['dictionary'][0]:.2f}x); pandas {read['ledger'][1] * 1e3:.1f} ms against "
        f"{read['dictionary'][1] * 1e3:.1f} ms ({read['ledger'][1] / read['dictionary'][1]:.2f}x)"
    )


if __name__ == "__main__":
    main()
