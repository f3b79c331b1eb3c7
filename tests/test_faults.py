"""Fault injection with real processes, files and signals: kills of the runner and of `rledger train` at
several points, and what the next start finds and does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rledger import Ledger

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

SPEC = {
    "name": "tiny",
    "env": {"id": "rledger/BoatRace-v0"},
    "seeds": [0, 1],
    "total_timesteps": 6144,
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 1},
    "eval": {"episodes": 1},
}
CLI = [sys.executable, "-c", "from rledger.cli import main; main()"]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[1])  # a zombie has ended


def _children(pid: int) -> list[int]:
    return [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent_of(int(p.name)) == pid
    ]


def _alive(pid: int) -> bool:
    return _parent_of(pid) is not None


def _workers(pid: int) -> list[int]:
    """The runner's pool workers (spawned interpreters running multiprocessing's spawn_main)."""
    out = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(child)
    return out


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _rollouts_on_disk(ledger_dir: Path) -> int:
    return len(list((ledger_dir / "transitions").glob("part-*.parquet"))) if ledger_dir.is_dir() else 0


def _assert_whole(run: Path) -> None:
    """A complete run: DONE, and every rollout it reports in every table it records."""
    assert (run / "DONE").is_file(), run
    ledger = Ledger(run)
    n = int(ledger.run_info["rollouts_written"])
    assert n == SPEC["total_timesteps"] // SPEC["ppo"]["n_steps"]
    for table in ("transitions", "samples", "updates"):
        assert sorted(ledger.table(table, columns=["rollout"]).rollout.unique()) == list(range(n)), table


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, after_rollouts",
    [("kill -9 runner", 1), ("kill -9 runner", 12), ("SIGTERM runner", 6), ("kill -9 group", 3)],
)
def test_killed_runner_leaves_no_worker_and_the_next_start_finishes(tmp_path, how, after_rollouts):
    """The runner killed while its two workers train: every worker ends within seconds, no DONE is
    written after the kill, and the same command then completes every run whole."""
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "runs"
    cmd = [*CLI, "run", str(spec_file), "--out", str(out), "--workers", "2"]
    log = open(tmp_path / "run.log", "w+")  # a file, not a pipe: a worker would hold a pipe open
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seeds = [out / "tiny" / "default" / f"seed={s}" for s in SPEC["seeds"]]
    try:
        _wait_for(
            lambda: (
                all(_rollouts_on_disk(s / "ledger") >= after_rollouts for s in seeds)
                or proc.poll() is not None
            ),
            300,
            f"{after_rollouts} rollouts in both runs",
        )
        assert proc.poll() is None, "the runs ended before the kill point; make them longer"
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        signalled = time.time()
        if how == "kill -9 runner":
            os.kill(proc.pid, signal.SIGKILL)
        elif how == "SIGTERM runner":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        output = (tmp_path / "run.log").read_text()
        _wait_for(lambda: not any(_alive(w) for w in workers), 10, "the workers to end")
        if how == "SIGTERM runner":
            assert proc.returncode == 130 and "Traceback" not in output, output
            assert "interrupted" in output
        time.sleep(1.0)
        assert not any((s / "DONE").exists() for s in seeds), "a worker marked a run complete after the kill"
        for s in seeds:  # nothing written a second after the signal
            newest = max((p.stat().st_mtime for p in s.rglob("*") if p.is_file()), default=0.0)
            assert newest <= signalled + 1.0, s
    finally:
        log.close()
        try:  # whatever is left of the group (orphaned workers included), should the test fail
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for s in seeds:
        _assert_whole(s)
    names = sorted(p.name for p in seeds[0].parent.iterdir())
    assert not any(n.endswith(".lock") for n in names), names  # the dead workers' locks were taken over
    assert {n.split(".partial-")[0] for n in names if ".partial-" in n} == {"seed=0", "seed=1"}, names
