"""Every run's ledger under a folder as one DuckDB database: the research loop's cross-run queries.

``Ledgers("runs/")`` finds the runner's run folders (``<experiment>/<variant>/seed=<k>/ledger``) and
gives views of the four tables over all of them, each with ``experiment``, ``variant`` and ``seed``
columns first, plus ``samples_x`` (samples joined with their transitions) and ``runs`` (one row per
run: its folder, rollouts, timesteps, steps per rollout). A run's rows come only from its rollouts
written whole (those with a manifest), as with :class:`~rledger.ledger.Ledger`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from rledger.ledger import schema
from rledger.ledger.reader import Ledger, LedgerError, empty_select, samples_x_view, sql_string
from rledger.ledger.writer import part_name

KEYS = ("experiment", "variant", "seed")


class Ledgers:
    """The ledgers of every run under ``root``: the ``--out`` folder of ``rledger run``, or one
    experiment folder in it (recognised by its ``spec.yaml``).

    ``complete``: only runs with a ``DONE`` marker (default); ``False`` takes runs in progress too, up to
    the rollouts written whole. ``experiment``: one experiment only. A run whose ledger cannot be read
    raises :class:`LedgerError` naming the file, or, given a ``broken`` list, is listed there and left
    out. ``sql(query)`` runs DuckDB over the views ``transitions``, ``samples``, ``updates``,
    ``episodes``, ``samples_x`` and ``runs``, streaming from the files; ``runs_table()`` lists the runs.
    """

    root: Path | None

    def __init__(
        self,
        root: str | os.PathLike[str],
        complete: bool = True,
        experiment: str | None = None,
        broken: list[str] | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder; pass the --out folder of `rledger run`")
        self._runs: list[tuple[dict[str, Any], Ledger]] = []
        self._con: duckdb.DuckDBPyConnection | None = None
        for labels, path in self._find(complete, experiment):
            self._add(labels, path, complete, broken)

    @classmethod
    def of(
        cls, runs: Iterable[tuple[str, str, int, str | os.PathLike[str]]], complete: bool = True
    ) -> Ledgers:
        """The ledgers of the given runs: (experiment, variant, seed, run or ledger folder) each."""
        self = cls.__new__(cls)
        self.root, self._runs, self._con = None, [], None
        for experiment, variant, seed, path in runs:
            labels = {"experiment": str(experiment), "variant": str(variant), "seed": int(seed)}
            self._add(labels, Path(path), complete, None)
        return self

    def _add(self, labels: dict[str, Any], path: Path, complete: bool, broken: list[str] | None) -> None:
        try:
            ledger = Ledger(path)
            info = ledger.run_info
            rollouts = ledger.check(None if complete else _whole_rollouts(ledger))
            labels = {
                **labels,
                "path": str(ledger.run_dir.parent),
                "rollouts": rollouts,
                "num_timesteps": int(info.get("num_timesteps") or 0),
                "steps_per_rollout": int(info["config"]["n_steps"]) * int(info["n_envs"]),
            }
        except (LedgerError, OSError, KeyError, TypeError, ValueError) as exc:
            message = str(exc) if isinstance(exc, LedgerError | OSError) else f"{path}: run.json: {exc}"
            if broken is None:
                raise LedgerError(message) from None
            broken.append(message)
            return
        self._runs.append((labels, ledger))

    def _find(self, complete: bool, experiment: str | None) -> Iterator[tuple[dict[str, Any], Path]]:
        assert self.root is not None
        one = (self.root / "spec.yaml").is_file()
        pattern = "*/seed=*/ledger/run.json" if one else "*/*/seed=*/ledger/run.json"
        for info in sorted(self.root.glob(pattern)):
            run = info.parent.parent
            exp = self.root.name if one else run.parent.parent.name
            seed = run.name.removeprefix("seed=")
            if not seed.isdigit() or (experiment is not None and exp != experiment):
                continue
            if complete and not (run / "DONE").is_file():
                continue
            yield {"experiment": exp, "variant": run.parent.name, "seed": int(seed)}, info.parent

    def __len__(self) -> int:
        return len(self._runs)

    def runs_table(self) -> pd.DataFrame:
        """One row per run: experiment, variant, seed, path, rollouts, num_timesteps, steps_per_rollout."""
        cols = [*KEYS, "path", "rollouts", "num_timesteps", "steps_per_rollout"]
        return pd.DataFrame([labels for labels, _ in self._runs], columns=cols)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            con = duckdb.connect()
            runs = self.runs_table()
            con.register("_runs", runs)
            con.execute("CREATE VIEW runs AS SELECT * FROM _runs")
            for table in schema.TABLES:
                con.execute(f"CREATE VIEW {table} AS {self._union(table)}")
            con.execute(samples_x_view((*KEYS, "rollout", "t", "env")))
            self._con = con
        return self._con

    def _union(self, table: str) -> str:
        """The runs' parts of ``table`` as one SELECT per (experiment, variant), labels as constants
        and ``seed`` from the ``seed=<k>`` folder (DuckDB's hive partitioning, per file, not per row);
        a run whose path does not allow that (an ``=`` elsewhere in it, or a folder not named after
        its seed) gets a SELECT of its own. Joined ``UNION ALL BY NAME``: runs with different info
        keys give NULL where a key is missing."""
        groups: dict[tuple[str, str], list[str]] = {}
        alone: list[tuple[dict[str, Any], list[str]]] = []
        for labels, ledger in self._runs:
            n = labels["rollouts"]
            files = [str(f) for f in ledger.files(table) if int(f.stem.removeprefix("part-")) < n]
            if not files:
                continue
            run = ledger.run_dir.parent
            if run.name == f"seed={labels['seed']}" and "=" not in str(run.parent) + ledger.run_dir.name:
                groups.setdefault((labels["experiment"], labels["variant"]), []).extend(files)
            else:
                alone.append((labels, files))

        def select(experiment: str, variant: str, files: list[str], seed: int | None) -> str:
            listed = ", ".join(sql_string(f) for f in files)
            seed_sql = "CAST(seed AS BIGINT)" if seed is None else str(int(seed))
            hive = "true" if seed is None else "false"
            rest = "* EXCLUDE (seed)" if seed is None else "*"
            return (
                f"SELECT {sql_string(experiment)} AS experiment, {sql_string(variant)} AS variant, {seed_sql} AS "
                f"seed, {rest} FROM read_parquet([{listed}], hive_partitioning = {hive})"
            )

        parts = [select(e, v, files, None) for (e, v), files in groups.items()]
        parts += [select(lab["experiment"], lab["variant"], files, lab["seed"]) for lab, files in alone]
        if parts:
            return " UNION ALL BY NAME ".join(parts)
        return empty_select(
            table, (), (("experiment", "VARCHAR"), ("variant", "VARCHAR"), ("seed", "BIGINT"))
        )

    def sql(self, query: str) -> pd.DataFrame:
        """Run a DuckDB query over the views; returns a DataFrame."""
        return self.con.execute(query).df()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        for _, ledger in self._runs:
            ledger.close()


def _whole_rollouts(ledger: Ledger) -> int:
    """The rollouts of a run in progress that are whole: those before the first without a manifest,
    and at most as many as its run.json counts (written after them)."""
    written = ledger.run_info.get("rollouts_written")
    written = written if isinstance(written, int) and written >= 0 else 0
    folder = ledger.run_dir / "manifest"
    if not folder.is_dir():
        return written
    have = {p.stem for p in folder.glob("part-*.json")}
    n = 0
    while n < written and part_name(n) in have:
        n += 1
    return n
