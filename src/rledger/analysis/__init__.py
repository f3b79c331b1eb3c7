"""Analyses over run folders: one module per claim, each a set of pure functions (data in, tidy
DataFrames out) plus a ``run(root, out)`` that writes that claim's figures (PNG and PDF) and the numbers
behind them (tidy CSV). ``rledger.report`` assembles them; ``analysis/*.py`` are thin scripts over
``run``. Ledger tables are aggregated in DuckDB, so runs larger than memory work."""

from rledger.analysis.common import ClaimResult, RunInfo, find_runs

__all__ = ["ClaimResult", "RunInfo", "find_runs"]
