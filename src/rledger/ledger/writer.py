"""Streaming Parquet writer: one file per (table, rollout), written whole or not at all, and a
rollout's manifest (``manifest/part-<rollout>.json``, its tables and their row counts) written after
its tables: readers take a rollout's parts only when its manifest exists, so a rollout appears whole
or not at all across its tables."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rledger.ledger import schema

MANIFEST = "manifest"
LEDGER_ENTRIES = (*schema.TABLES, MANIFEST, "run.json")


def storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk, a file-size limit or a folder that cannot be written: the user's
    to fix (exit 2 from the CLI), not a failure of the run."""
    import errno

    storage = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
    return isinstance(exc, OSError) and exc.errno in storage


def part_name(rollout: int) -> str:
    """The file stem of a rollout's parts and manifest."""
    return f"part-{rollout:06d}"


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write_bytes` left in ``folder`` and its
    subfolders (``.<name>.<random>.tmp``); returns them."""
    found = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()] if Path(folder).is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


class LedgerExistsError(FileExistsError):
    """The run directory already holds a ledger and ``overwrite`` was not given."""


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status`` on Linux: ``os.umask`` can
    only be read by setting it, which races with the ledger's background thread); elsewhere the value
    read once at import."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _UMASK_AT_IMPORT


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask()


def follow_umask(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (0666 or 0777 minus the umask):
    ``tempfile`` creates files 0600 and folders 0700, which a rename would keep."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename. The file
    gets the mode the umask gives a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def check_run_dir(run_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse a non-empty ledger location unless ``overwrite``; nothing is written here."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"ledger: {path} exists and is not a directory; pass another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LedgerExistsError(
            f"ledger: {path} already exists and is not empty; pass overwrite=True (CLI: --overwrite) "
            "to replace its ledger, or choose a new directory"
        )
    return path


def cut_back(run_dir: Path, keep: int) -> list[Path]:
    """Remove the parts and manifests of rollouts ``>= keep`` (and an interrupted write's temporary
    files) from the ledger in ``run_dir``: a ledger continued from a checkpoint taken after ``keep``
    rollouts. Returns the removed files."""
    removed = remove_temp_files(run_dir)
    for folder in (*schema.TABLES, MANIFEST):
        for p in sorted((run_dir / folder).glob("part-*.*")):
            try:
                rollout = int(p.name.split(".")[0].removeprefix("part-"))
            except ValueError:
                continue
            if rollout >= keep:
                p.unlink()
                removed.append(p)
    return removed


PARQUET_OPTIONS: dict[str, Any] = {
    # zstd level 1: the same size as the default level on these float columns, at half the time
    "compression": "zstd",
    "compression_level": 1,
    # no dictionary encoding: pyarrow builds a dictionary for every column and gives it up on the
    # float columns (nearly every value distinct) after paying for it; without it writing takes 2-4.7x
    # less CPU per row and the files are 15-32% smaller in every table, read as fast by DuckDB and
    # pandas (benchmarks/bench_parquet.py; benchmarks/RESULTS.md)
    "use_dictionary": False,
    "row_group_size": 1 << 20,
}


class LedgerWriter:
    """Writes the four ledger tables of one run as Parquet part files.

    ``arrow_table(table, columns)`` checks and types one rollout's columns (cheap; InstrumentedPPO calls
    it on the training thread), ``write_arrow(table, rollout, tbl)`` encodes them to
    ``<run_dir>/<table>/part-<rollout>.parquet`` (the background thread's share); the file is written
    under a temporary name and renamed, so a reader sees it whole or not at all.

    ``keep``: continue the ledger already in ``run_dir`` after its first ``keep`` rollouts; :meth:`open`
    removes the rollouts after them (:func:`cut_back`). The caller checks that it is this run's ledger.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        info_keys: tuple[str, ...] = (),
        overwrite: bool = False,
        keep: int | None = None,
    ):
        schema.check_info_keys(info_keys)
        self.run_dir = Path(run_dir) if keep is not None else check_run_dir(run_dir, overwrite)
        self.info_keys = tuple(info_keys)
        self.overwrite = overwrite
        self.keep = keep
        self._opened = False

    def open(self, run_info: Mapping[str, Any]) -> None:
        """Create the run directory (clearing an old ledger when ``overwrite``) and write run.json."""
        if self._opened:
            atomic_write_json(self.run_dir / "run.json", dict(run_info))
            return
        if self.keep is None:
            check_run_dir(self.run_dir, self.overwrite)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.run_dir)  # left by an interrupted writer
        if self.keep is not None:
            cut_back(self.run_dir, self.keep)
        elif self.overwrite:
            for entry in LEDGER_ENTRIES:
                p = self.run_dir / entry
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        for table in (*schema.TABLES, MANIFEST):
            (self.run_dir / table).mkdir(exist_ok=True)
        atomic_write_json(self.run_dir / "run.json", dict(run_info))
        self._opened = True

    def update_run_info(self, run_info: Mapping[str, Any]) -> None:
        atomic_write_json(self.run_dir / "run.json", dict(run_info))

    def write_arrow(self, table: str, rollout: int, tbl: pa.Table) -> Path:
        """Write one rollout's rows of ``table`` from :meth:`arrow_table`'s result."""
        if not self._opened:
            raise RuntimeError("LedgerWriter.write_arrow called before open()")
        path = self.run_dir / table / f"{part_name(rollout)}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(tbl, sink, **PARQUET_OPTIONS)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return path

    def write_manifest(self, rollout: int, rows: Mapping[str, int]) -> None:
        """Mark rollout ``rollout`` whole: ``rows`` gives each table written for it and its row count.
        Written after the rollout's parts (readers ignore parts without a manifest)."""
        atomic_write_json(
            self.run_dir / MANIFEST / f"{part_name(rollout)}.json", {"rollout": rollout, "rows": dict(rows)}
        )

    def add_to_manifest(self, rollout: int, rows: Mapping[str, int]) -> None:
        """List more tables in a whole rollout's manifest (tables written after the rollout's others:
        ``momentum``, ``influence``, ``influence_steps``), after their parts are written."""
        path = self.run_dir / MANIFEST / f"{part_name(rollout)}.json"
        manifest = json.loads(path.read_text())
        manifest["rows"].update({k: int(v) for k, v in rows.items()})
        atomic_write_json(path, manifest)

    def arrow_table(self, table: str, cols: Mapping[str, Any]) -> pa.Table:
        """``cols`` (every schema column of ``table`` mapped to an array) as an Arrow table with the
        schema's types. Numeric arrays are referenced, not copied: they must not change until written."""
        arrow_schema = schema.arrow_schema(table, self.info_keys)
        expected = set(arrow_schema.names)
        if set(cols) != expected:
            missing, extra = sorted(expected - set(cols)), sorted(set(cols) - expected)
            raise ValueError(f"ledger table {table}: missing columns {missing}, unexpected columns {extra}")
        arrays = []
        for field in arrow_schema:
            values = cols[field.name]
            if pa.types.is_list(field.type):
                arr = np.asarray(values, dtype=np.float32)
                arr = arr.reshape(len(arr), -1)
                flat = pa.array(arr.reshape(-1), type=field.type.value_type)
                offsets = pa.array(np.arange(0, arr.size + 1, arr.shape[1], dtype=np.int32))
                arrays.append(pa.ListArray.from_arrays(offsets, flat))
            else:
                arrays.append(pa.array(np.asarray(values), type=field.type))
        return pa.Table.from_arrays(arrays, schema=arrow_schema)
