"""Running an experiment's runs: locally in a process pool, or as Ray tasks.

:func:`plan_runs` resolves the spec into jobs and checks every run folder before anything starts
(complete runs are skipped; a complete run whose config differs is refused without ``overwrite``);
:func:`run_local` and :func:`run_ray` execute the jobs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rledger.experiments import run as runmod
from rledger.experiments.spec import Spec, SpecError
from rledger.ledger.writer import storage_error


@dataclass
class Job:
    variant: str
    seed: int
    path: Path
    config: dict[str, Any]
    state: str  # new, done, conflict, partial


def plan_runs(spec: Spec, out: str | Path, overwrite: bool) -> list[Job]:
    """Every (train variant, seed) run with its folder's state; refuses conflicts unless ``overwrite``,
    and a spec whose envs cannot be made or recorded (:func:`~rledger.experiments.preflight.check_envs`).
    Writes nothing."""
    from rledger.experiments.preflight import check_envs

    if Path(out).exists() and not Path(out).is_dir():
        raise SpecError(f"--out: {out} exists and is not a folder; pass a folder")
    check_envs(spec)
    jobs = []
    for variant in spec.train:
        for seed in spec.seeds:
            config = spec.run_config(variant, seed)
            path = runmod.run_dir(out, spec.name, variant, seed)
            jobs.append(Job(variant, seed, path, config, runmod.status(path, config)))
    broken = [j for j in jobs if j.state == "broken"]
    if broken and not overwrite:
        try:
            runmod.read_done(broken[0].path)
        except ValueError as exc:
            raise SpecError(f"{exc} ({len(broken)} such run(s))") from None
    conflicts = [j for j in jobs if j.state == "conflict"]
    if conflicts and not overwrite:
        raise SpecError(
            f"{conflicts[0].path}: a complete run whose config.yaml differs from the spec "
            f"({len(conflicts)} such run(s)); pass --overwrite to rerun them, or use another --out"
        )
    return jobs


def save_spec(spec: Spec, out: str | Path) -> None:
    """Keep the resolved spec beside its runs (``<out>/<experiment>/spec.yaml``), so that `rledger probe
    OUT/<experiment>` can re-evaluate them."""
    import yaml

    from rledger.ledger.writer import atomic_write_bytes

    atomic_write_bytes(
        Path(out) / spec.name / "spec.yaml", yaml.safe_dump(spec.raw, sort_keys=False).encode()
    )


def _worker(
    config: dict[str, Any], path: str, command: str, overwrite: bool, track: str | None = None
) -> dict[str, Any]:
    return runmod.execute(config, Path(path), command, overwrite, track)


def die_with_parent(parent: int) -> None:
    """A pool worker's initializer: the worker ends when the runner ``parent`` ends, however it ends
    (kill -9 included), instead of training on and writing ``DONE`` markers nobody waits for. Linux
    sends it SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and as a second
    guard, a thread checks the parent's pid every half second."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watch below does it
        pass
    if os.getppid() != parent:  # the runner died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="rledger-parent-watch", daemon=True).start()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes: their runs stay incomplete (no DONE)."""
    processes = getattr(pool, "_processes", None) or {}  # pid -> Process (CPython's executor)
    for proc in list(processes.values()):
        if proc.is_alive():
            proc.terminate()


def run_local(
    jobs: list[Job],
    workers: int,
    command: str,
    overwrite: bool,
    show: bool = True,
    track: str | None = None,
) -> list[dict[str, Any]]:
    """Run the jobs that are not complete in a pool of ``workers`` processes (one torch thread each),
    with a progress display. Ctrl-C (or SIGTERM through the CLI) stops the workers and cancels pending
    runs; started runs stay incomplete (no DONE) and resume from their last checkpoint next time. Workers end
    with the runner, even when it is killed (:func:`die_with_parent`). Runs that another runner is writing (their lock is held) are
    skipped; :class:`~rledger.experiments.run.RunLocked` names them once the others are done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    todo = [j for j in jobs if j.state != "done" or overwrite]
    results = [runmod.read_done(j.path) for j in jobs if j not in todo]
    if not todo:
        return results
    ctx = multiprocessing.get_context("spawn")
    locked: list[str] = []
    failed: list[tuple[Job, BaseException]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show, transient=False) as progress:
        overall = progress.add_task(f"runs ({len(results)} already complete)", total=len(todo))
        bars: dict[Future[dict[str, Any]], tuple[Job, Any]] = {}
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            try:
                for job in todo:
                    fut = pool.submit(_worker, job.config, str(job.path), command, overwrite, track)
                    total = job.config["total_timesteps"]
                    bars[fut] = (
                        job,
                        progress.add_task(
                            f"  {job.config['experiment']}/{job.variant} seed={job.seed}", total=total
                        ),
                    )
                pending = set(bars)
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        job, bar = bars[fut]
                        try:
                            results.append(fut.result())  # re-raises a failed run's error
                        except runmod.RunLocked as exc:  # another runner writes it: go on with the rest
                            locked.append(str(exc))
                            continue
                        except Exception as exc:  # the run failed: the others go on
                            failed.append((job, exc))
                            progress.update(bar, description=f"{progress.tasks[bar].description} failed")
                            continue
                        progress.update(bar, completed=job.config["total_timesteps"])
                        progress.advance(overall)
                    for fut in pending:
                        job, bar = bars[fut]
                        p = job.path / "progress.json"
                        if p.is_file():
                            try:
                                progress.update(bar, completed=json.loads(p.read_text())["timesteps"])
                            except (ValueError, KeyError, OSError):
                                pass
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI raises KeyboardInterrupt for it)
                _stop_workers(pool)
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    _raise_failures(failed, locked, len(todo))
    return results


def _raise_failures(failed: list[tuple[Job, BaseException]], locked: list[str], n: int) -> None:
    """After every run has ended: one error for the runs that failed (one line each) or were skipped
    because another runner holds them. Bad input (every failure a
    :class:`~rledger.experiments.spec.SpecError`, a full disk or a folder that cannot be written)
    raises SpecError; failures of other kinds raise :class:`~rledger.experiments.run.RunsFailed`."""
    if failed:
        lines = [runmod.failure_line(job.path, exc) for job, exc in failed]
        lines += [f"skipped, another runner writes it: {m}" for m in locked]
        head = f"{len(failed)} of {n} runs failed"
        if locked:
            head += f" and {len(locked)} were skipped"
        msg = head + "; the others are complete:\n" + "\n".join(f"  {line}" for line in lines)
        if all(isinstance(exc, SpecError) or storage_error(exc) for _, exc in failed):
            raise SpecError(msg)  # the user's to fix: exit 2 from the CLI
        raise runmod.RunsFailed(msg)
    if locked:
        raise runmod.RunLocked(
            f"{len(locked)} of {n} runs were being written by another runner and were skipped; the "
            f"others are complete. First: {locked[0]}"
        )


def run_ray(
    jobs: list[Job], address: str | None, command: str, overwrite: bool, track: str | None = None
) -> list[dict[str, Any]]:
    """One Ray task per job, on the cluster at ``address`` or a new local one. The output folder must
    be visible to every node (a shared filesystem)."""
    try:
        import ray
    except ImportError:
        raise SpecError("--backend ray: Ray is not installed; pip install 'rledger[ray]'") from None
    todo = [j for j in jobs if j.state != "done" or overwrite]
    results = [runmod.read_done(j.path) for j in jobs if j not in todo]
    locked: list[str] = []
    failed: list[tuple[Job, BaseException]] = []
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=1)(_worker)
        refs = {task.remote(j.config, str(j.path.resolve()), command, overwrite, track): j for j in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=None)
            for ref in ready:
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:  # the run's own error, as raised in the task
                    cause = _cause(exc)
                    if isinstance(cause, runmod.RunLocked):
                        locked.append(str(cause))
                    else:
                        failed.append((refs[ref], cause))
                except ray.exceptions.RayError as exc:  # the worker died, or the task could not run
                    failed.append((refs[ref], exc))
            time.sleep(0)
    finally:
        if started:
            ray.shutdown()
    _raise_failures(failed, locked, len(todo))
    return results


def _cause(exc: Any) -> BaseException:
    """A Ray task error's original exception (its class and message), for the one-line summary."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_configs(out: str | Path, broken: list[str] | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run folder, its parsed config.yaml) of every run under ``out`` (the ``--out`` folder, or one
    experiment folder in it, recognised by its spec.yaml), in path order. A config that cannot be read
    raises a ValueError naming it, or, given a ``broken`` list, is listed there and skipped."""
    out = Path(out)
    pattern = "*/seed=*/config.yaml" if (out / "spec.yaml").is_file() else "*/*/seed=*/config.yaml"
    for cfg in sorted(out.glob(pattern)):
        try:
            config = runmod.read_config(cfg.parent)
        except ValueError as exc:
            if broken is None:
                raise
            broken.append(str(exc))
            continue
        yield cfg.parent, config


def list_runs(out: str | Path, broken: list[str] | None = None) -> list[dict[str, Any]]:
    """Every run folder under ``out``: experiment, variant, seed, status (complete, failed: its last
    attempt raised an error, kept in ``error.txt``; or incomplete), steps, return, performance.
    A run whose files cannot be read raises a ValueError naming the file, or, given a ``broken`` list,
    is listed there and left out."""
    rows = []
    for path, config in run_configs(out, broken):
        row: dict[str, Any] = {
            "experiment": config.get("experiment"),
            "variant": config.get("variant"),
            "seed": config.get("seed"),
            "status": "complete"
            if (path / runmod.DONE).is_file()
            else ("failed" if (path / runmod.ERROR).is_file() else "incomplete"),
            "steps": None,
            "return": None,
            "performance": None,
            "path": str(path),
        }
        if (path / runmod.DONE).is_file():
            try:
                done = runmod.read_done(path)
            except ValueError as exc:
                if broken is None:
                    raise
                broken.append(str(exc))
                continue
            row["steps"] = done.get("timesteps")
            own = done.get("eval", {}).get(config.get("variant"), {})
            row["return"] = own.get("return") if isinstance(own, dict) else None
            row["performance"] = own.get("hidden_reward") if isinstance(own, dict) else None
        elif (path / "progress.json").is_file():
            try:
                row["steps"] = json.loads((path / "progress.json").read_text())["timesteps"]
            except (ValueError, KeyError, TypeError, OSError):
                pass
        rows.append(row)
    return rows
