"""The ``rledger`` command line: wiring only, the work is done by the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from rledger.ledger import Ledger
from rledger.ledger.schema import TABLES

console = Console(soft_wrap=True)
"""Lines are not wrapped by the console (the terminal wraps them): a path printed in a message stays whole,
to be copied or searched for, whatever the width; tables are still laid out to the width."""


TRUST_PICKLES_HELP = (
    "load runs without policy.npz (written by an older rledger) from model.zip, which unpickles it and "
    "so runs any code it holds: only for runs you trust"
)


WORKERS_HELP = "runs trained at once, one process and one torch thread each (at most your CPU cores)"


class _Bad(click.ClickException):
    """Bad input: one line naming the field and the fix, exit code 2."""

    exit_code = 2


class _Failed(click.ClickException):
    """Runs that failed (not bad input): one line per run, its traceback kept in the run's folder;
    exit code 1."""

    exit_code = 1


class _Main(click.Group):
    """The command group: a full disk, a file-size limit or a read-only folder ends any command with
    one line naming the file (exit 2) instead of a traceback; the writes are atomic, so nothing half
    written is left but the incomplete run, which restarts next time."""

    def invoke(self, ctx: click.Context) -> object:
        from rledger.ledger.writer import storage_error

        try:
            return super().invoke(ctx)
        except OSError as exc:
            if not storage_error(exc):
                raise
            where = exc.filename or "a file"
            raise _Bad(
                f"{where}: {exc.strerror} (a full disk, a file-size limit or a folder that cannot be "
                "written); free space or pass another output folder; an unfinished run has no DONE and "
                "restarts next time"
            ) from exc


@click.group(cls=_Main)
@click.version_option(package_name="rledger")
def main() -> None:
    """Measure what the reinforcement signal does inside PPO."""
    _terminate_as_interrupt()


def _terminate_as_interrupt() -> None:
    """SIGTERM ends a command as Ctrl-C does (KeyboardInterrupt): the runner stops its workers, runs
    stay incomplete, nothing is left training."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _track_options(fn: Any) -> Any:
    """--track and --wandb-project (rledger run, rledger train)."""
    fn = click.option(
        "--wandb-project", default="rledger", show_default=True, help="the W&B project --track logs to"
    )(fn)
    return click.option(
        "--track", is_flag=True,
        help="stream each run's TensorBoard scalars to Weights & Biases (needs `pip install wandb`)",
    )(fn)  # fmt: skip


@main.command()
@click.option("--env", "env_id", required=True, help="gymnasium env id, e.g. CartPole-v1")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="seed of the run (envs, policy, sampling)"
)
@click.option("--timesteps", type=click.IntRange(min=1), required=True, help="total env steps")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="run directory for the ledger")
@click.option(
    "--n-envs", type=click.IntRange(min=1), default=1, show_default=True, help="envs stepped together"
)
@click.option("--n-steps", type=click.IntRange(min=2), default=2048, show_default=True, help="PPO n_steps")
@click.option(
    "--batch-size", type=click.IntRange(min=2), default=64, show_default=True, help="PPO minibatch size"
)
@click.option("--info-key", "info_keys", multiple=True, help="scalar info key to record (repeatable)")
@click.option(
    "--record-every", type=click.IntRange(min=1), default=1, show_default=True,
    help="record the per-sample table every N-th rollout (the others every rollout)",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="replace an existing ledger in --out")
@_track_options
def train(
    env_id: str,
    seed: int,
    timesteps: int,
    out: Path,
    n_envs: int,
    n_steps: int,
    batch_size: int,
    info_keys: tuple[str, ...],
    record_every: int,
    overwrite: bool,
    track: bool,
    wandb_project: str,
) -> None:
    """One instrumented PPO run without a spec (SB3 defaults otherwise) into the run folder OUT
    (ledger, model, evaluation, TensorBoard logs), then a summary of its ledger.

    \b
    Example:
      rledger train --env CartPole-v1 --timesteps 20000 --out runs/cartpole"""
    from rledger.experiments import SpecError, execute, validate
    from rledger.experiments.run import RunLocked, command_line, failure_line
    from rledger.ledger.writer import storage_error

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise _Bad(
            f"--out: {out} exists and is not empty; pass --overwrite to replace it or choose another path"
        )
    project = _tracking(track, wandb_project)
    raw = {
        "name": "train",
        "env": {"id": env_id},
        "seeds": [seed],
        "total_timesteps": timesteps,
        "n_envs": n_envs,
        "ppo": {"n_steps": n_steps, "batch_size": batch_size},
        "record": {"every": record_every, "info_keys": list(info_keys)},
        "eval": {"episodes": 5, "deterministic": True},
    }
    try:
        spec = validate(raw, "rledger train")
    except SpecError as exc:
        raise _Bad(str(exc).replace("env.id:", "--env:").replace("record.info_keys:", "--info-key:")) from exc
    try:
        from rledger.experiments.preflight import check_envs

        check_envs(spec)
    except SpecError as exc:
        raise _Bad(
            str(exc)
            .replace("env.id:", "--env:")
            .replace("record.info_keys:", "--info-key:")
            .replace("ppo.batch_size:", "--batch-size:")
            .replace("ppo.n_steps:", "--n-steps:")
        ) from exc
    config = spec.run_config("default", seed)
    try:
        with console.status(f"training {env_id} for {timesteps} steps into {out}"):
            execute(config, out, command_line(), overwrite=overwrite, track=project)
    except (RunLocked, SpecError, FileExistsError) as exc:
        raise _Bad(str(exc)) from exc
    except Exception as exc:  # the run failed: one line, the traceback in OUT/error.txt
        if storage_error(exc):
            raise  # one line naming the file, exit 2 (_Main)
        raise _Failed(failure_line(out, exc)) from exc
    _print_summary(Ledger(out / "ledger"))


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
    help="folder of the experiments' run folders (OUT/<experiment>/<variant>/seed=<k>)",
)  # fmt: skip
@click.option("--seeds", default=None, help="override the spec's seeds, e.g. 0-9 or 0,3,5")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help=WORKERS_HELP)
@click.option(
    "--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="local: a process pool here; ray: one Ray task per run (OUT on a filesystem every node sees)",
)  # fmt: skip
@click.option(
    "--ray-address", default=None, help="address of an existing Ray cluster (default: start a local one)"
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override a spec field (repeatable)"
)
@click.option("--overwrite", is_flag=True, help="rerun complete runs whose config differs from the spec")
@_track_options
def run(
    spec_path: Path,
    out: Path,
    seeds: str | None,
    workers: int,
    backend: str,
    ray_address: str | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    track: bool,
    wandb_project: str,
) -> None:
    """Run the experiment SPEC (YAML): every train variant x seed, skipping complete runs.

    \b
    Example:
      rledger run experiments/smoke.yaml --out runs --workers 2 --set ppo.learning_rate=1e-3"""
    from rledger.experiments import SpecError, load_spec, plan_runs, run_local, run_ray
    from rledger.experiments.backends import save_spec
    from rledger.experiments.run import RunLocked, RunsFailed, command_line

    project = _tracking(track, wandb_project)
    try:
        spec = load_spec(spec_path, list(overrides), seeds)
        jobs = plan_runs(spec, out, overwrite)
        if backend == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise SpecError("--backend ray: Ray is not installed; pip install 'rledger[ray]'") from None
    except SpecError as exc:
        raise _Bad(str(exc)) from exc
    save_spec(spec, out)
    done = sum(j.state == "done" for j in jobs)
    console.print(f"{spec.name}: {len(jobs)} runs ({done} complete) -> {out / spec.name}")
    try:
        if backend == "local":
            results = run_local(jobs, workers, command_line(), overwrite, track=project)
        else:
            results = run_ray(jobs, ray_address, command_line(), overwrite, track=project)
    except (SpecError, RunLocked) as exc:
        raise _Bad(str(exc)) from exc
    except RunsFailed as exc:
        raise _Failed(str(exc)) from exc
    except KeyboardInterrupt:
        console.print(
            "interrupted: incomplete runs have no DONE marker and resume from their last checkpoint next time"
        )
        sys.exit(130)
    _print_runs([r for r in _list(out) if r["experiment"] == spec.name])
    console.print(f"{len(results)} runs complete")


@main.command()
@click.argument("hyperparams", metavar="ZOO_FILE", type=click.Path(path_type=Path))
@click.argument("env_id", metavar="ENV_ID")
@click.option("--import", "modules", multiple=True, help="module that registers the env id (repeatable)")
@click.option("--name", default=None, help="the experiment's name [default: zoo_<ENV_ID>]")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="write the spec here [default: print it]"
)
@click.option("--overwrite", is_flag=True, help="replace an existing --out file")
def zoo(hyperparams: Path, env_id: str, modules: tuple[str, ...], name: str | None, out: Path | None,
        overwrite: bool) -> None:  # fmt: skip
    """Turn an rl-baselines3-zoo PPO entry into an rledger spec.

    \b
    Example:
      rledger zoo hyperparams/ppo.yml CartPole-v1 --out experiments/zoo_cartpole.yaml"""
    import yaml

    from rledger.experiments import SpecError
    from rledger.experiments.zoo import spec_from_zoo
    from rledger.ledger.writer import atomic_write_bytes

    try:
        spec = spec_from_zoo(hyperparams, env_id, list(modules), name)
        if out is not None and out.exists() and not overwrite:
            raise SpecError(f"{out}: exists; pass --overwrite to replace it")
        if out is not None and out.is_dir():
            raise SpecError(f"{out}: is a folder; --out takes a file such as experiments/zoo.yaml")
    except SpecError as exc:
        raise _Bad(str(exc)) from exc
    text = f"# from {hyperparams} ({env_id}) by `rledger zoo`\n" + yaml.safe_dump(spec, sort_keys=False)
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_bytes(out, text.encode())
        console.print(f"wrote {out}")


@main.command()
@click.argument("spec_path", metavar="SPEC_OR_RUN_DIR", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
    help="folder of the experiments' run folders (ignored when given an experiment folder)",
)  # fmt: skip
@click.option("--seeds", default=None, help="override the spec's seeds, e.g. 0-9")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help=WORKERS_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override a spec field")
@click.option("--trust-pickles", is_flag=True, help=TRUST_PICKLES_HELP)
def probe(
    spec_path: Path,
    out: Path,
    seeds: str | None,
    workers: int,
    overrides: tuple[str, ...],
    trust_pickles: bool,
) -> None:
    """Evaluate the probes of a spec (YAML) or of an experiment folder (OUT/<experiment>, which holds
    the spec it ran) on its trained runs, training missing ones first, and on the controls; write
    tidy results, intervals and decisions under OUT/<experiment>/probes/.

    \b
    Examples:
      rledger probe experiments/probe_tamper.yaml --out runs --workers 2
      rledger probe runs/probe_tamper"""
    from rledger.analysis.probes import gate_text, interval_text
    from rledger.experiments import SpecError, load_spec, plan_runs, run_local
    from rledger.experiments.backends import save_spec
    from rledger.experiments.run import RunLocked, RunsFailed, command_line
    from rledger.probes.run import run_probes

    if spec_path.is_dir():  # an experiment folder: its saved spec, its parent as --out
        out, spec_path = spec_path.parent, spec_path / "spec.yaml"
    try:
        spec = load_spec(spec_path, list(overrides), seeds)
        if not spec.probes:
            raise SpecError(
                "probes: the spec defines no probe; add a probes section (see docs/experiments.md)"
            )
        jobs = plan_runs(spec, out, overwrite=False)
    except SpecError as exc:
        raise _Bad(str(exc)) from exc
    save_spec(spec, out)
    if any(j.state != "done" for j in jobs):
        try:
            run_local(jobs, workers, command_line(), overwrite=False)
        except (SpecError, RunLocked) as exc:
            raise _Bad(str(exc)) from exc
        except RunsFailed as exc:
            raise _Failed(str(exc)) from exc
    try:
        results = run_probes(spec, out, trust_pickles)
    except SpecError as exc:
        raise _Bad(str(exc)) from exc
    from rich.markup import escape

    for result in results:
        table = Table(title=escape(f"probe {result['probe']}: {result['rule']}"))
        for col in ("policy", "test (unadjusted)", "difference [95% interval]", "seeds", "gates"):
            table.add_column(col)
        for policy, d in result["decisions"].items():
            table.add_row(
                escape(policy), d["outcome"], interval_text(d), str(d["n_seeds"]),
                escape(gate_text(result["gates"].get(policy))),
            )  # fmt: skip
        console.print(table)
    console.print("Verdicts (Holm-adjusted, with the gates and controls): rledger report " + str(out))


def _tracking(track: bool, project: str) -> str | None:
    """The W&B project of --track, after checking that wandb can be imported (nothing is written
    before); None without --track."""
    if not track:
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise _Bad(
            "--track: Weights & Biases is not installed; pip install wandb (then `wandb login`)"
        ) from None
    if not project.strip():
        raise _Bad("--wandb-project: must not be empty")
    return project


@main.command(name="ls")
@click.argument("out", type=click.Path(path_type=Path), default=Path("runs"))
@click.option(
    "--strict", is_flag=True, help="exit 2 if any run's files cannot be read (default: leave it out, warn)"
)
def ls_runs(out: Path, strict: bool) -> None:
    """List the runs under OUT with status, steps, return and performance.

    \b
    Example:
      rledger ls runs"""
    if not out.is_dir():
        raise _Bad(f"{out}: no such folder; pass the --out folder of rledger run")
    skipped: list[str] = []
    _print_runs(_list(out, skipped))
    _warn_skipped(skipped)
    if skipped and strict:
        raise _Bad(f"{len(skipped)} runs cannot be read; first: {skipped[0]}")


def _list(out: Path, skipped: list[str] | None = None) -> list[dict[str, object]]:
    from rledger.experiments import list_runs

    return list_runs(out, [] if skipped is None else skipped)


def _print_runs(rows: list[dict[str, object]]) -> None:
    table = Table()
    for col in ("experiment", "variant", "seed", "status", "steps", "return", "performance"):
        table.add_column(
            col, justify="right" if col in ("seed", "steps", "return", "performance") else "left"
        )
    for r in rows:
        fmt = [
            "-" if r[c] is None else (f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]))
            for c in ("experiment", "variant", "seed", "status", "steps", "return", "performance")
        ]
        table.add_row(*fmt)
    console.print(table)


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--episodes", type=click.IntRange(min=1), default=1, show_default=True, help="episodes per variant"
)
@click.option("--variant", default=None, help="the evaluation variant to replay (default: every one)")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="folder of the clips [default: RUN/replay]"
)
@click.option(
    "--fps", type=click.FloatRange(min=0.5, max=60), default=4.0, show_default=True, help="frames per second"
)
@click.option(
    "--scale", type=click.IntRange(min=1, max=16), default=2, show_default=True, help="pixels per env pixel"
)
@click.option("--overwrite", is_flag=True, help="replace existing clips")
@click.option("--trust-pickles", is_flag=True, help=TRUST_PICKLES_HELP)
def replay(
    run_dir: Path,
    episodes: int,
    variant: str | None,
    out: Path | None,
    fps: float,
    scale: int,
    overwrite: bool,
    trust_pickles: bool,
) -> None:
    """Watch a run: GIFs (and MP4s where ffmpeg exists) of its evaluation episodes, the same env
    variants, episode seeds and action mode as `rledger run`'s evaluation.

    \b
    Example:
      rledger replay runs/probe_lagoon/open/seed=0 --episodes 2 --variant inert"""
    from rledger.replay import ReplayError, replay_run

    try:
        with console.status(f"replaying {run_dir}"):
            written = replay_run(run_dir, out, episodes, variant, fps, scale, trust_pickles, overwrite)
    except ReplayError as exc:
        raise _Bad(str(exc)) from exc
    except ValueError as exc:  # an unreadable config.yaml or policy.npz: one line naming the file
        raise _Bad(str(exc)) from exc
    for path in written:
        console.print(str(path))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def summary(run_dir: Path) -> None:
    """Summarize the ledger of RUN_DIR (a run folder, or a ledger folder).

    \b
    Example:
      rledger summary runs/smoke/default/seed=0"""
    from rledger.ledger import LedgerError

    try:
        _print_summary(Ledger(run_dir))  # a run folder or a ledger folder
    except (FileNotFoundError, LedgerError) as exc:
        raise _Bad(str(exc)) from exc


def _print_summary(ledger: Ledger) -> None:
    info = ledger.run_info
    files = Table(title=f"ledger {ledger.run_dir}  (env {info.get('env_id')}, seed {info.get('seed')})")
    for col in ("table", "rows", "files", "MB on disk", "bytes/row"):
        files.add_column(col, justify="right" if col != "table" else "left")
    for table in TABLES:
        paths = ledger.files(table)
        rows = int(ledger.sql(f"SELECT count(*) AS n FROM {table}").n.iloc[0])
        size = sum(p.stat().st_size for p in paths)
        files.add_row(
            table, f"{rows:,}", str(len(paths)), f"{size / 1e6:.2f}", f"{size / rows:.1f}" if rows else "-"
        )
    console.print(files)
    ep = ledger.sql(
        'SELECT rollout, avg("return") AS mean_return, count(*) AS episodes FROM episodes GROUP BY rollout ORDER BY rollout'
    )
    if len(ep):
        first, last = ep.iloc[0], ep.iloc[-1]
        console.print(
            f"episodes: {int(ep.episodes.sum())}; mean return {first.mean_return:.1f} in rollout "
            f"{int(first.rollout)} -> {last.mean_return:.1f} in rollout {int(last.rollout)}"
        )
    s = ledger.sql(
        """SELECT count(*) AS n, avg(clipped::INT) AS clipped,
        corr(ln(abs(advantage_used)), ln(adam_update_norm)) FILTER (WHERE NOT clipped AND advantage_used != 0)
            AS corr_adv_update,
        corr(ln(abs(advantage_used)), ln(pg_grad_norm)) FILTER (WHERE NOT clipped AND advantage_used != 0)
            AS corr_adv_pg,
        avg((sign(self_reinforcement) = sign(advantage_used))::INT) FILTER (WHERE NOT clipped) AS sign_agree
        FROM samples"""
    ).iloc[0]
    if s.n:
        console.print(
            f"samples: {int(s.n):,}; clipped {s.clipped:.1%}; corr(log|A|, log pg_grad_norm) = {s.corr_adv_pg:.3f}; "
            f"corr(log|A|, log adam_update_norm) = {s.corr_adv_update:.3f}; "
            f"self_reinforcement has the sign of A in {s.sign_agree:.1%} of unclipped samples"
        )


@main.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="report folder [default: ROOT/report]"
)
@click.option("--overwrite", is_flag=True, help="replace an existing report folder")
@click.option(
    "--results",
    "results_page",
    type=click.Path(path_type=Path),
    default=None,
    help="also write the findings and verdicts as one Markdown page (e.g. docs/results.md)",
)
@click.option("--trust-pickles", is_flag=True, help=TRUST_PICKLES_HELP)
@click.option(
    "--strict", is_flag=True, help="exit 2 if any run's files cannot be read (default: leave it out, warn)"
)
def report(
    root: Path,
    out: Path | None,
    overwrite: bool,
    results_page: Path | None,
    trust_pickles: bool,
    strict: bool,
) -> None:
    """Analyse the runs and probes under ROOT (the --out folder of `rledger run`/`probe`) into
    report.md, a self-contained report.html, results.json and the figures with their CSVs.

    \b
    Example:
      rledger report runs --results docs/results.md"""
    from rledger.experiments.run import UntrustedModel, command_line
    from rledger.report import ReportError, build_report

    try:
        with console.status(f"analysing {root}"):
            result = build_report(root, out, overwrite, results_page, command_line(), trust_pickles, strict)
    except (ReportError, FileNotFoundError) as exc:
        raise _Bad(str(exc)) from exc
    except UntrustedModel as exc:
        raise _Bad(str(exc)) from exc
    _print_verdicts(result)
    _warn_skipped(result.skipped)
    console.print(f"report written to {result.folder / 'report.html'} in {result.seconds:.0f} s")


def _warn_skipped(skipped: list[str]) -> None:
    from rich.markup import escape

    for message in skipped:
        console.print(f"[yellow]left out[/yellow] {escape(message)}")
    if skipped:
        console.print(
            f"{len(skipped)} runs left out: their files cannot be read (--strict makes this exit 2)"
        )


def _print_verdicts(result: object) -> None:
    from rich.markup import escape

    verdicts = [v for r in result.results for v in r.verdicts]  # type: ignore[attr-defined]
    if not verdicts:
        return
    table = Table(title="does the policy seek reward? (one verdict per experiment and policy under test)")
    for col in ("probe", "evaluation", "policy", "counted", "verdict"):
        table.add_column(col)
    for v in verdicts:
        table.add_row(
            escape(v["probe"]), v["evaluation"], escape(v["policy"]), v["counted"], escape(v["verdict"])
        )
    console.print(table)


@main.command()
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True,
    help="folder of the quickstart's runs; the report goes to OUT/report",
)  # fmt: skip
@click.option("--suite", "suite_path", type=click.Path(path_type=Path), default=None,
              help="suite file [default: experiments/quickstart.yaml shipped with rledger]")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help=WORKERS_HELP)
@click.option("--overwrite", is_flag=True, help="rerun runs whose config differs and replace the report")
def quickstart(out: Path, suite_path: Path | None, workers: int, overwrite: bool) -> None:
    """Train the quickstart suite (boat race, held-out lagoon and tamper probes, few seeds), evaluate
    its probes with their controls, and write the report: OUT/report/report.html.

    \b
    Example:
      rledger quickstart --out runs/quickstart --workers 2"""
    import time

    from rledger.experiments import SpecError, plan_runs, run_local
    from rledger.experiments.backends import save_spec
    from rledger.experiments.run import RunLocked, RunsFailed, command_line
    from rledger.probes.run import run_probes
    from rledger.report import ReportError, build_report
    from rledger.suite import default_suite_path, load_suite

    start = time.perf_counter()
    try:
        suite = load_suite(suite_path or default_suite_path())
        jobs = [j for spec in suite.all_specs for j in plan_runs(spec, out, overwrite)]
    except SpecError as exc:
        raise _Bad(str(exc)) from exc
    for spec in suite.all_specs:
        save_spec(spec, out)
    jobs.sort(key=lambda j: -j.config["total_timesteps"])  # longest first packs the workers best
    console.print(f"{suite.name}: {len(jobs)} runs, {suite.total_timesteps:,} env steps -> {out}")
    try:
        run_local(jobs, workers, command_line(), overwrite)
    except (SpecError, RunLocked) as exc:
        raise _Bad(str(exc)) from exc
    except RunsFailed as exc:
        raise _Failed(str(exc)) from exc
    for spec in suite.specs:
        if spec.probes:
            with console.status(f"probes of {spec.name}"):
                run_probes(spec, out)
    if suite.reward_scale is not None:  # its runs trained with the others above
        from rledger.probes.reward_scale import compare_sweep

        with console.status("reward-scale sweep: comparing each run with its baseline"):
            compare_sweep(out / suite.reward_scale.name)
    try:
        with console.status("report"):
            result = build_report(out, None, overwrite=True)
    except ReportError as exc:
        raise _Bad(str(exc)) from exc
    _print_verdicts(result)
    console.print(
        f"quickstart done in {time.perf_counter() - start:.0f} s: open {result.folder / 'report.html'}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
