"""The writer side of a run's ledger: each rollout's tables built and written, in a background thread.

:class:`LedgerSink` takes one rollout's columns at the end of its ``train()``: Arrow tables of the
transitions, updates and episodes are built on the calling (training) thread; the samples' columns,
which may still be computing in the background (futures from :mod:`rledger.persample`), and the
Parquet encoding and files go to one background thread per sink (``background=True``), at a lower
scheduling priority. Each of the thread's Python-level calls hands the GIL over and back and so slows
training: it gets few, long calls. :meth:`LedgerSink.sync` waits for it; an error there is raised by
the next :meth:`~LedgerSink.raise_error` or :meth:`~LedgerSink.sync`, and nothing after the failed
rollout is written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from rledger.ledger import schema, summary
from rledger.ledger.writer import LedgerWriter
from rledger.persample.momentum import MomentumTracker

T = TypeVar("T")
Columns = dict[str, np.ndarray]


class LedgerSink:
    """Writes the rollouts of one run (``run_dir``) through a :class:`LedgerWriter`."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        info_keys: tuple[str, ...] = (),
        overwrite: bool = False,
        background: bool = True,
        keep: int | None = None,
        summaries: bool = True,
    ):
        self.writer = LedgerWriter(run_dir, info_keys, overwrite, keep)
        self.summaries = summaries
        self._summaries: list[dict[str, float]] = []  # computed, not yet taken
        self._lock = threading.Lock()
        self.info_keys = tuple(info_keys)
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: list[Future[None]] = []
        self._failed = False

    @property
    def run_dir(self) -> os.PathLike[str]:
        return self.writer.run_dir

    def open(self, run_info: Mapping[str, Any]) -> None:
        self.writer.open(run_info)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in the sink's background thread (started on first use)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="rledger-ledger", initializer=_lower_priority
            )
        return self._executor.submit(fn)

    def write_rollout(
        self,
        rollout: int,
        run_info: Mapping[str, Any],
        transitions: Mapping[str, Any] | None = None,
        samples: list[Columns | Future[Columns]] | None = None,
        updates: list[dict[str, Any]] | None = None,
        episodes: list[dict[str, Any]] | None = None,
        n_envs: int = 1,
        discrete: bool = False,
        momentum: MomentumTracker | None = None,
    ) -> None:
        """One rollout's tables (None: not recorded; ``samples``: pieces in order, futures included)
        and the run's metadata after it; with ``summaries``, the rollout's summary
        (:mod:`rledger.ledger.summary`) for :meth:`take_summaries`. ``momentum``: then the momentum
        rows of every rollout up to this one whose steps are all counted (:meth:`end_momentum` writes
        the rest)."""
        writer = self.writer
        tables: list[tuple[str, Any]] = []
        actions = None
        if transitions is not None:
            # copies: some columns are views of the rollout buffer, which the next rollout refills
            cols = {k: np.array(v, copy=True) for k, v in transitions.items()}
            actions = cols["action"] if discrete else None
            tables.append(("transitions", writer.arrow_table("transitions", cols)))
        if samples is not None:
            pieces = samples

            def samples_table() -> Any:
                cols = sample_columns(combine(pieces))
                if self.summaries:
                    found = summary.rollout_summary(rollout, cols, actions, n_envs)
                    with self._lock:
                        self._summaries.append(found)
                return writer.arrow_table("samples", cols)

            tables.append(("samples", samples_table))
        if updates is not None:
            tables.append(("updates", writer.arrow_table("updates", rows_to_columns(updates, "updates", ()))))
        if episodes:
            cols = rows_to_columns(episodes, "episodes", self.info_keys)
            tables.append(("episodes", writer.arrow_table("episodes", cols)))
        info = dict(run_info)

        def write() -> None:
            rows = {}
            for table, tbl in tables:
                arrow = tbl() if callable(tbl) else tbl
                writer.write_arrow(table, rollout, arrow)
                rows[table] = arrow.num_rows
            writer.write_manifest(rollout, rows)  # after the parts: the rollout is whole
            writer.update_run_info(info)
            if momentum is not None:
                self._write_momentum(momentum, rollout)

        self._queue(write)

    def _queue(self, fn: Callable[[], None]) -> None:
        """Run a write in the background thread (or now, without one), in order; after a failed
        write none runs (its error is raised by the next :meth:`raise_error` or :meth:`sync`)."""

        def job() -> None:
            if self._failed:  # a write before this one failed: write nothing after it
                return
            try:
                fn()
            except BaseException:
                self._failed = True
                raise

        if self.background:
            self._jobs.append(self.submit(job))
        else:
            job()

    def _write_momentum(self, tracker: MomentumTracker, through: int | None) -> None:
        """The momentum (and influence) rows of the rollouts all of whose steps are counted: each
        rollout's parts, then its manifest lists them (the rollout's other tables are already whole)."""
        for rollout, tables in tracker.take(through).items():
            rows = {}
            for table, cols in tables.items():
                typed = {
                    c.name: cols[c.name].astype(c.dtype.to_pandas_dtype(), copy=False)
                    for c in schema.columns(table)
                }
                arrow = self.writer.arrow_table(table, typed)
                self.writer.write_arrow(table, rollout, arrow)
                rows[table] = arrow.num_rows
            self.writer.add_to_manifest(rollout, rows)

    def end_momentum(self, tracker: MomentumTracker) -> None:
        """After every rollout handed over: the momentum attribution's pending steps counted to the end
        of the ``learn()`` call, and their rows written."""

        def job() -> None:
            tracker.end_learn()
            self._write_momentum(tracker, None)

        self._queue(job)

    def take_summaries(self) -> list[dict[str, float]]:
        """The rollout summaries computed since the last call, oldest first."""
        with self._lock:
            out, self._summaries = self._summaries, []
        return out

    def after_written(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every rollout handed over so far is in the ledger: in the background thread
        after them, or now without one. Not called after a failed write (its error is raised by the
        next :meth:`raise_error` or :meth:`sync`)."""

        def job() -> None:
            if not self._failed:
                fn()

        if self.background:
            self._jobs.append(self.submit(job))
        else:
            job()

    def raise_error(self) -> None:
        """Raise an error of the background thread now (it stops the run); drop finished jobs."""
        if any(job.done() and job.exception() is not None for job in self._jobs):
            self.sync()
        self._jobs = [job for job in self._jobs if not job.done()]

    def sync(self) -> None:
        """Wait until every rollout handed over so far is written, and stop the thread. Raises the
        first error it met (after waiting for the rest)."""
        jobs, self._jobs = self._jobs, []
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for job in jobs:
            job.result()


def _lower_priority() -> None:
    """Run the background thread at a lower scheduling priority than training (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not permitted: keep the default
        pass


def combine(pieces: list[Columns | Future[Columns]]) -> Columns | None:
    """Join pieces of one table's columns (waiting for futures; their errors are raised here).
    ``None`` when there is nothing."""
    done = [p.result() if isinstance(p, Future) else p for p in pieces]
    if not done:
        return None
    return {k: np.concatenate([d[k] for d in done]) for k in done[0]}


def sample_columns(samples: Columns | None) -> Columns:
    """The samples table's columns with the schema's dtypes (empty when nothing was recorded)."""
    cols = schema.columns("samples")
    if samples is None:
        return {c.name: np.zeros(0, dtype=c.dtype.to_pandas_dtype()) for c in cols}
    return {c.name: samples[c.name].astype(c.dtype.to_pandas_dtype(), copy=False) for c in cols}


def rows_to_columns(rows: list[dict[str, Any]], table: str, info_keys: tuple[str, ...]) -> Columns:
    sch = schema.arrow_schema(table, info_keys)
    return {f.name: np.array([r[f.name] for r in rows], dtype=f.type.to_pandas_dtype()) for f in sch}
