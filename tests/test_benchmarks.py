"""The benchmark scripts run end to end at tiny sizes (their figures are only meaningful at full size,
on a quiet machine; here only what does not depend on timing is checked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_bench_parquet_rows_per_table_and_smaller_files():
    out = run("bench_parquet.py", "--steps", "2048", "--repeats", "1")
    rows = {}
    for line in out.splitlines():
        m = re.match(
            r"\| (\w+) \| (\d+) \| ([\d.]+), ([\d.]+) \| ([\d.]+), ([\d.]+) \| ([\d.]+), ([\d.]+) \|", line
        )
        if m:
            rows[m.group(1)] = [float(x) for x in m.groups()[1:]]
    assert set(rows) == {
        "transitions",
        "samples",
        "updates",
        "episodes",
        "momentum",
        "influence",
        "influence_steps",
    }
    assert rows["transitions"][0] == 2048 and rows["samples"][0] == 2048 * 10  # SB3 defaults: 10 epochs
    # bytes per row (not timing): the ledger's options write smaller files than dictionary encoding
    for table in ("samples", "momentum", "influence"):
        assert rows[table][2] < rows[table][4], (table, rows[table])
    assert "samples read back" in out


def test_bench_corun_prints_both_ratios():
    out = run("bench_corun.py", "--pairs", "1", "--steps", "4096")
    for who in ("rledger", "stand-in"):
        m = re.search(rf"{who} / plain: training thread CPU ([\d.]+)x .*all threads ([\d.]+)x", out)
        assert m, out
        assert float(m.group(1)) > 0 and float(m.group(2)) > 0


def test_stats_calibration_floor_table():
    out = run("stats_calibration.py", "--floor", "--experiments", "4")
    cells = [line for line in out.splitlines() if re.match(r"\| \d+ \| [\d.]+ \|", line)]
    assert len(cells) == 6
    # every seed exactly equal: decided by the exact bound alone, so no randomness in these cells
    first = {tuple(c.split("|")[1:3]): c.split("|")[3].strip() for c in cells}
    assert first[(" 10 ", " 0.1 ")] == "0.00" and first[(" 20 ", " 0.15 ")] == "1.00"


def test_bench_env_steps_compares_trees_and_features(tmp_path):
    """Two trees: one without Pools-v0 (a copy of src whose registry lacks it, as a tree from before
    it); every configuration is timed, the missing one in the newer tree alone against its baseline."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(REPO / "src", old, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    init = old / "rledger" / "envs" / "__init__.py"
    text = init.read_text()
    assert '    "rledger/Pools-v0"' in text
    init.write_text("\n".join(line for line in text.splitlines() if '"rledger/Pools-v0"' not in line) + "\n")
    out = run("bench_env_steps.py", str(old), str(REPO / "src"), "--steps", "300", "--repeats", "2")
    lines = [line for line in out.splitlines() if re.match(r"\s{2}\S", line)]
    assert len(lines) == 8, out
    assert sum("B/A" in line for line in lines) == 7
    pools = next(line for line in lines if line.strip().startswith("pools"))
    assert "(absent)" in pools and "against B's lagoon" in pools
    assert all(float(x) > 0 for line in lines for x in re.findall(r"B\s+(\d+)", line))
