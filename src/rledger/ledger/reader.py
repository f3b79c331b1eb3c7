"""Reading a ledger: pandas DataFrames with pushed-down selections, and DuckDB SQL over the files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rledger.ledger import schema
from rledger.ledger.writer import MANIFEST, part_name

Filter = tuple[str, str, Any]


class LedgerError(ValueError):
    """A ledger file that cannot be read as what it should be; the message names the file."""


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
        path = self.run_dir / "run.json"
        try:
            info = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise LedgerError(f"{path}: not the ledger's JSON metadata ({exc}); rerun the run") from None
        if not isinstance(info, dict):
            raise LedgerError(f"{path}: not the ledger's JSON metadata (not an object); rerun the run")
        return info

    @property
    def info_keys(self) -> tuple[str, ...]:
        return tuple(self.run_info.get("info_keys", ()))

    def files(self, table: str) -> list[Path]:
        """The table's Parquet parts of the rollouts written whole (those with a manifest; every part in
        a ledger written before manifests), each checked to hold the schema's columns and types."""
        schema.columns(table)  # validates the name
        parts = sorted((self.run_dir / table).glob("part-*.parquet"))
        if (self.run_dir / MANIFEST).is_dir():
            whole = {p.stem for p in (self.run_dir / MANIFEST).glob("part-*.json")}
            parts = [p for p in parts if p.stem in whole]
        expected = schema.arrow_schema(table, self.info_keys)
        for part in parts:
            _check_part(part, expected)
        return parts

    def check(self, rollouts: int | None = None) -> int:
        """Check that the ledger is whole: a manifest for every rollout run.json counts (0, 1, ... with
        none missing or extra), each manifest's parts present with its row counts and the schema's
        columns. Returns the number of rollouts; raises :class:`LedgerError` naming the first fault.
        A ledger written before manifests is checked part by part (readable, the schema's columns).
        ``rollouts``: check only the first ``rollouts`` (at most as many as run.json counts)."""
        n = self.run_info.get("rollouts_written")
        if not isinstance(n, int) or n < 0:
            raise LedgerError(f"{self.run_dir / 'run.json'}: rollouts_written is {n!r}, not a count")
        if rollouts is not None:
            if not 0 <= rollouts <= n:
                raise LedgerError(
                    f"{self.run_dir}: holds {n} rollouts (run.json), not the {rollouts} asked for"
                )
            n = rollouts
        folder = self.run_dir / MANIFEST
        if not folder.is_dir():  # written before manifests: which parts a rollout has is not known
            for table in schema.TABLES:
                self.files(table)  # each part readable, with the schema's columns
            return n
        found = sorted(p.stem for p in folder.glob("part-*.json"))
        if rollouts is not None:
            found = [f for f in found if f < part_name(n)]
        expected = [part_name(k) for k in range(n)]
        if found != expected:
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            raise LedgerError(
                f"{folder}: run.json counts {n} rollouts, but the manifests of {missing[:3]} are missing"
                f" and {extra[:3]} are extra; the ledger is not whole"
            )
        for stem in expected:
            path = folder / f"{stem}.json"
            try:
                rows = json.loads(path.read_text())["rows"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                rows = None
            if not isinstance(rows, dict):
                raise LedgerError(f"{path}: not a rollout manifest; the ledger is not whole")
            for table, n_rows in rows.items():
                part = self.run_dir / table / f"{stem}.parquet"
                if table not in schema.TABLES or not part.is_file():
                    raise LedgerError(
                        f"{path}: lists {table}, but {part} is missing; the ledger is not whole"
                    )
                got = _check_part(part, schema.arrow_schema(table, self.info_keys))
                if got != n_rows:
                    raise LedgerError(
                        f"{part}: {got} rows, its manifest says {n_rows}; the ledger is not whole"
                    )
        return n

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
        try:
            read = dataset.to_table(columns=list(columns) if columns is not None else None, filter=expr)
        except (pa.ArrowException, OSError) as exc:  # a part whose footer is whole but data is not
            raise LedgerError(
                f"{self.run_dir / table}: a part cannot be read ({exc}); rerun the run"
            ) from None
        return read.to_pandas()

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
                    listed = ", ".join(sql_string(str(f)) for f in files)
                    con.execute(
                        f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}], hive_partitioning = false)"
                    )
                else:
                    con.execute(f"CREATE VIEW {table} AS {empty_select(table, self.info_keys)}")
            con.execute(samples_x_view(("rollout", "t", "env")))
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


def continue_ledger(
    path: str | os.PathLike[str],
    record: Sequence[str],
    record_every: int,
    info_keys: Sequence[str],
    keep: int | None = None,
) -> tuple[Path, int | None, Any]:
    """Where a model continues recording (``InstrumentedPPO.attach_ledger``): ``(folder, keep,
    first_episode)``. ``path`` is a ledger folder or a run folder holding one in ``ledger/``; a
    missing or empty folder starts a new ledger (``keep`` None). An existing ledger must have been
    recorded with the same tables, ``record_every`` and info keys, and be whole up to ``keep``
    rollouts (default: all it counts); ``first_episode`` gives each env's next episode number."""
    import numpy as np

    given = Path(path)
    folder = given / "ledger" if (given / "ledger" / "run.json").is_file() else given
    if not (folder / "run.json").is_file():
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(
                f"ledger: {given} is not a ledger (no run.json) and not empty; pass a ledger folder, a run "
                "folder, or a new folder"
            )
        return folder, None, None
    led = Ledger(folder)
    info = led.run_info
    for name, mine in (
        ("tables", list(record)),
        ("record_every", record_every),
        ("info_keys", list(info_keys)),
    ):
        if info.get(name) != mine:
            raise ValueError(
                f"ledger: {folder} was recorded with {name}={info.get(name)!r}, this model records "
                f"{mine!r}; continue it with the same settings, or pass a new folder"
            )
    keep = led.check(keep)
    first = led.sql(
        "SELECT env, MAX(episode) + 1 AS next FROM (SELECT env, episode, rollout FROM transitions "
        f"UNION ALL SELECT env, episode, rollout FROM episodes) WHERE rollout < {int(keep)} GROUP BY env"
    )
    led.close()
    first_episode = np.zeros(int(first.env.max()) + 1 if len(first) else 0, dtype=np.int64)
    first_episode[first.env.to_numpy(dtype=np.int64)] = first.next.to_numpy(dtype=np.int64)
    return folder, keep, first_episode


_CHECKED_PARTS: dict[tuple[str, int, int, str], int] = {}  # (path, mtime, size, schema) -> rows


def _check_part(part: Path, expected: pa.Schema) -> int:
    """``part``'s row count, after checking that it is a readable Parquet file with exactly the
    columns and types of ``expected``; raises :class:`LedgerError` naming the file. A file checked
    before and unchanged since (same modification time and size) is not read again."""
    try:
        st = part.stat()
    except OSError as exc:
        raise LedgerError(f"{part}: cannot be read ({exc.strerror}); rerun the run") from None
    key = (str(part), st.st_mtime_ns, st.st_size, str(expected))
    if key in _CHECKED_PARTS:
        return _CHECKED_PARTS[key]
    try:
        meta = pq.read_metadata(part)
        got = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        raise LedgerError(f"{part}: not a readable Parquet part ({exc}); rerun the run") from None
    if not got.equals(expected, check_metadata=False):
        diff = sorted(set(got.names) ^ set(expected.names)) or [
            f.name for f in expected if got.field(f.name).type != f.type
        ]
        raise LedgerError(
            f"{part}: not a part of this ledger's table (columns or types differ: {diff[:5]}); remove it"
        )
    if len(_CHECKED_PARTS) > 1_000_000:
        _CHECKED_PARTS.clear()
    _CHECKED_PARTS[key] = meta.num_rows
    return meta.num_rows


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


def sql_string(text: str) -> str:
    """``text`` as a DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def empty_select(table: str, info_keys: Sequence[str], labels: Sequence[tuple[str, str]] = ()) -> str:
    """A SELECT of no rows with ``table``'s columns and types, after the ``labels`` (name, DuckDB type)."""
    cols = [f"CAST(NULL AS {t}) AS {name}" for name, t in labels]
    cols += [
        f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"'
        for f in schema.arrow_schema(table, tuple(info_keys))
    ]
    return f"SELECT {', '.join(cols)} WHERE FALSE"


def samples_x_view(keys: Sequence[str]) -> str:
    """The ``samples_x`` view: samples joined with the transition each came from, on ``keys``."""
    return (
        "CREATE VIEW samples_x AS SELECT s.*, tr.episode, tr.state_id, tr.action, tr.reward, "
        'tr.advantage, tr.value, tr."return" FROM samples s JOIN transitions tr '
        f"USING ({', '.join(keys)})"
    )


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
