"""Reading a ledger: pandas DataFrames with pushed-down selections, and DuckDB SQL over the files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.dataset as ds

from rledger.ledger import schema

Filter = tuple[str, str, Any]


class Ledger:
    """A run's ledger, read from ``run_dir``: the folder given as ``ledger=`` to InstrumentedPPO, or a
    run folder of the experiment runner (``<out>/<experiment>/<variant>/seed=<k>``, its ``ledger/``).

    ``transitions()``, ``samples()``, ``updates()`` and ``episodes()`` return pandas DataFrames; pass
    ``columns=[...]`` and ``filters=[("rollout", ">=", 3), ...]`` to read only what is needed (both are
    pushed down to the Parquet scan). ``sql(query)`` runs DuckDB over views named after the tables,
    streaming from the files, so runs larger than memory can be aggregated.
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        given = Path(run_dir)
        # a run folder of the experiment runner (rledger run / train / ls) holds its ledger in ledger/
        self.run_dir = given / "ledger" if (given / "ledger" / "run.json").is_file() else given
        info = self.run_dir / "run.json"
        if not info.is_file() or not any((self.run_dir / t).is_dir() for t in schema.TABLES):
            raise FileNotFoundError(
                f"ledger: {given} is neither a ledger folder (run.json and table folders, as given as "
                "ledger= to InstrumentedPPO) nor a run folder holding one in ledger/; pass one of those"
            )
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def run_info(self) -> dict[str, Any]:
        """The parsed run.json (configuration, seed, versions, schema version)."""
        return json.loads((self.run_dir / "run.json").read_text())

    @property
    def info_keys(self) -> tuple[str, ...]:
        return tuple(self.run_info.get("info_keys", ()))

    def files(self, table: str) -> list[Path]:
        schema.columns(table)  # validates the name
        return sorted((self.run_dir / table).glob("part-*.parquet"))

    def table(
        self, table: str, columns: Sequence[str] | None = None, filters: Sequence[Filter] | None = None
    ) -> pd.DataFrame:
        """One table as a DataFrame, rows ordered as written."""
        arrow_schema = schema.arrow_schema(table, self.info_keys)
        if columns is not None:
            unknown = [c for c in columns if c not in arrow_schema.names]
            if unknown:
                raise KeyError(
                    f"ledger table {table} has no columns {unknown}; columns: {arrow_schema.names}"
                )
        files = self.files(table)
        if not files:
            empty = arrow_schema.empty_table()
            df = empty.to_pandas()
            return df[list(columns)] if columns is not None else df
        dataset = ds.dataset([str(f) for f in files], format="parquet", schema=arrow_schema)
        expr = None
        for name, op, value in filters or ():
            term = _filter_expr(name, op, value)
            expr = term if expr is None else expr & term
        return dataset.to_table(
            columns=list(columns) if columns is not None else None, filter=expr
        ).to_pandas()

    def transitions(
        self, columns: Sequence[str] | None = None, filters: Sequence[Filter] | None = None
    ) -> pd.DataFrame:
        return self.table("transitions", columns, filters)

    def samples(
        self, columns: Sequence[str] | None = None, filters: Sequence[Filter] | None = None
    ) -> pd.DataFrame:
        return self.table("samples", columns, filters)

    def updates(
        self, columns: Sequence[str] | None = None, filters: Sequence[Filter] | None = None
    ) -> pd.DataFrame:
        return self.table("updates", columns, filters)

    def episodes(
        self, columns: Sequence[str] | None = None, filters: Sequence[Filter] | None = None
    ) -> pd.DataFrame:
        return self.table("episodes", columns, filters)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per table (and ``samples_x`` joined with transitions),
        over the files present when it was made (:meth:`close` it to see rollouts written since)."""
        if self._con is None:
            con = duckdb.connect()
            for table in schema.TABLES:
                files = self.files(table)
                if files:
                    # the exact files, never a glob: a run folder's name may hold glob characters
                    listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
                    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}])")
                else:
                    cols = ", ".join(
                        f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"'
                        for f in schema.arrow_schema(table, self.info_keys)
                    )
                    con.execute(f"CREATE VIEW {table} AS SELECT {cols} WHERE FALSE")
            con.execute(
                "CREATE VIEW samples_x AS SELECT s.*, tr.episode, tr.state_id, tr.action, tr.reward, "
                'tr.advantage, tr.value, tr."return" FROM samples s JOIN transitions tr '
                "USING (rollout, t, env)"
            )
            self._con = con
        return self._con

    def sql(self, query: str) -> pd.DataFrame:
        """Run a DuckDB query over the views ``transitions``, ``samples``, ``updates``, ``episodes``
        and ``samples_x`` (samples joined with their transitions); returns a DataFrame."""
        return self.con.execute(query).df()

    def samples_with_transitions(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Samples joined with the transition each came from, on (rollout, t, env)."""
        cols = "*" if columns is None else ", ".join(f'"{c}"' for c in columns)
        return self.sql(f"SELECT {cols} FROM samples_x ORDER BY rollout, epoch, minibatch")

    def reinforcement(
        self, before: int | Sequence[int] | None = None, states: Sequence[int] | None = None
    ) -> pd.DataFrame:
        """Cumulative ``self_reinforcement`` per (state, action) of a discrete-action run.

        Columns ``state_id, action, before, reinforcement, n``: the summed ``self_reinforcement`` and
        the count of samples of each (state, action) over the rollouts ``< before``, for each bound in
        ``before`` (None: every rollout, ``before`` = rollouts written), only pairs sampled by then,
        ordered by (before, state_id, action); ``states`` restricts the states. One DuckDB pass over
        the samples joined with their transitions, whatever the number of bounds."""
        if before is None:
            bounds = [int(self.run_info["rollouts_written"])]
        elif isinstance(before, int):
            bounds = [before]
        else:
            bounds = [int(b) for b in before]
        cols = ", ".join(
            f"SUM(self_reinforcement) FILTER (WHERE rollout < {b}) AS sr_{i}, "
            f"COUNT(*) FILTER (WHERE rollout < {b}) AS n_{i}"
            for i, b in enumerate(bounds)
        )
        where = (
            ""
            if states is None
            else f"WHERE state_id IN ({', '.join(str(int(s)) for s in states) or 'NULL'})"
        )
        wide = self.sql(
            f"SELECT state_id, CAST(action[1] AS INTEGER) AS action, {cols} FROM samples_x {where} "
            "GROUP BY state_id, action"
        )
        frames = [
            pd.DataFrame(
                {
                    "state_id": wide.state_id.to_numpy(dtype="int64"),
                    "action": wide.action.to_numpy(dtype="int64"),
                    "before": b,
                    "reinforcement": wide[f"sr_{i}"].fillna(0.0).to_numpy(dtype="float64"),
                    "n": wide[f"n_{i}"].fillna(0).to_numpy(dtype="int64"),
                }
            )
            for i, b in enumerate(bounds)
        ]
        out = pd.concat(frames, ignore_index=True)
        out = out[out.n > 0].sort_values(["before", "state_id", "action"], kind="stable")
        return out.reset_index(drop=True)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _filter_expr(name: str, op: str, value: Any) -> ds.Expression:
    field = ds.field(name)
    ops = {
        "==": lambda: field == value,
        "=": lambda: field == value,
        "!=": lambda: field != value,
        "<": lambda: field < value,
        "<=": lambda: field <= value,
        ">": lambda: field > value,
        ">=": lambda: field >= value,
        "in": lambda: field.isin(list(value)),
    }
    if op not in ops:
        raise ValueError(f"filter ({name!r}, {op!r}, ...): unknown operator; use one of {list(ops)}")
    return ops[op]()


def _duck_type(t: Any) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_list(t):
        return "FLOAT[]"
    return "VARCHAR"
