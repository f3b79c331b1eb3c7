"""Waiting for a killed runner's lock to be free, for the tests that kill runners and rerun."""

from __future__ import annotations

import time
from pathlib import Path


def wait_unlocked(run: Path, timeout: float = 30.0) -> None:
    """Until the killed runner's worker that held the run's lock has exited (a zombie counts as
    exited: ``rledger.experiments.run._alive``), so that the rerun may take the lock."""
    from rledger.experiments.run import _alive, _lock_owner

    lock = run.with_name(run.name + ".lock")
    end = time.monotonic() + timeout
    while (owner := _lock_owner(lock)) is not None and _alive(owner):
        assert time.monotonic() < end, f"the killed worker (pid {owner['pid']}) did not exit"
        time.sleep(0.05)
