"""Experiment specs and the runner: errors, a 2x2 smoke experiment, resumption, reloading a model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from runlock import wait_unlocked

from rledger.cli import main
from rledger.experiments import load_spec, parse_seeds
from rledger.experiments.spec import SpecError

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"


def write_spec(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is ...:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ppo.foo": 1}, "ppo.foo: unknown key"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"n_envs": "two"}, "n_envs: must be an integer >= 1, got 'two'"),
        ({"env.id": "rledger/Nope-v0"}, "env.id: unknown gymnasium id 'rledger/Nope-v0'"),
        ({"total_timesteps": -5}, "total_timesteps: must be an integer > 0, got -5"),
        ({"ppo.learning_rate": -1}, "ppo.learning_rate: must be a number > 0"),
        ({"seeds": "3-1"}, "seeds: range '3-1' runs backwards"),
        ({"seeds": "a-b"}, "seeds: must be a list of integers or a range"),
        ({"eval.variants": ["nope"]}, "eval.variants: must be a list of variant names"),
        ({"record.tables": ["samples", "bogus"]}, "record.tables: must be a subset"),
        (
            {"record.tables": ["transitions", "momentum"]},
            "record.tables: momentum is computed with the samples",
        ),
        ({"record.tables": ["samples", "momentum"]}, "record.tables: momentum cannot be resumed"),
        ({"record.watch": "laps"}, "record.watch: unknown set 'laps'"),
        (
            {"record.watch": [[3, 1]]},
            "record.watch: the watched pairs' influence and momentum_horizon need momentum",
        ),
        ({"record.watch": [[3]]}, "record.watch: must be a list of [state id, action] pairs"),
        (
            {
                "record.tables": ["transitions", "samples", "momentum"],
                "checkpoint_every": 0,
                "record.watch": [[99999, 0]],
            },
            "record.watch[0]: state id 99999: this env has states 0 ..",
        ),
        (
            {
                "record.tables": ["transitions", "samples", "momentum"],
                "checkpoint_every": 0,
                "record.watch": [[0, 7]],
            },
            "record.watch[0]: action 7 is not in Discrete(4)",
        ),
        (
            {
                "record.tables": ["transitions", "samples", "momentum"],
                "checkpoint_every": 0,
                "record.watch": "boat_race_arrows",
            },
            "record.watch: 'boat_race_arrows' names no (state, action) pair on rledger/Tamper-v0",
        ),
    ],
)
def test_bad_spec_exit_2_nothing_written(tmp_path, changes, message):
    spec = write_spec(tmp_path, **changes)
    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1  # one line
    assert not out.exists()


def test_unreadable_and_invalid_files(tmp_path):
    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(tmp_path / "missing.yaml"), "--out", str(out)])
    assert res.exit_code == 2 and "missing.yaml: cannot read the spec" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nenv: [unclosed\n")
    res = CliRunner().invoke(main, ["run", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "bad.yaml:" in res.output and "not valid YAML" in res.output
    res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(out), "--seeds", "0-x"])
    assert res.exit_code == 2 and "seeds:" in res.output
    res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(out), "--set", "ppo.n_steps"])
    assert res.exit_code == 2 and "--set" in res.output
    assert not out.exists()


def test_seed_ranges():
    assert parse_seeds("0-3") == (0, 1, 2, 3)
    assert parse_seeds("0,3,5") == (0, 3, 5)
    assert parse_seeds("0-1,7") == (0, 1, 7)
    assert parse_seeds([4, 2]) == (4, 2)
    with pytest.raises(SpecError, match="duplicate"):
        parse_seeds("1,1")


def test_spec_round_trip_and_overrides():
    spec = load_spec(SMOKE, ["ppo.n_epochs=3", "eval.episodes=1"], seeds="5-6")
    assert spec.ppo["n_epochs"] == 3 and spec.eval.episodes == 1 and spec.seeds == (5, 6)
    cfg = spec.run_config("absent", 5)
    assert cfg["env"]["kwargs"] == {"button": "absent"}
    assert set(cfg["eval"]["variants"]) == {"absent", "reachable"}


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_smoke_two_variants_two_seeds(smoke_out):
    from rledger import Ledger

    dirs = sorted(smoke_out.glob("smoke/*/seed=*"))
    assert [f"{d.parent.name}/{d.name}" for d in dirs] == [
        "absent/seed=0", "absent/seed=1", "reachable/seed=0", "reachable/seed=1",
    ]  # fmt: skip
    for d in dirs:
        for name in ("config.yaml", "command.txt", "run.json", "model.zip", "eval.json", "DONE"):
            assert (d / name).is_file(), f"{d}/{name}"
        assert list((d / "tensorboard").rglob("events.*"))
        ledger = Ledger(d / "ledger")
        assert len(ledger.transitions()) == 1024
        assert set(json.loads((d / "eval.json").read_text())) == {"absent", "reachable"}
        info = json.loads((d / "run.json").read_text())
        assert info["variant"] == d.parent.name and "versions" in info


def test_saved_model_reloads_and_acts(smoke_out):
    import gymnasium as gym
    from stable_baselines3 import PPO

    model = PPO.load(smoke_out / "smoke" / "absent" / "seed=0" / "model.zip")
    env = gym.make("rledger/Tamper-v0", button="absent")
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(int(action))


def test_tensorboard_has_grad_norm(smoke_out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((smoke_out / "smoke" / "absent" / "seed=0" / "tensorboard").rglob("events.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/grad_norm", "train/clip_coef", "train/approx_kl", "train/clip_fraction"} <= tags


def test_complete_runs_are_skipped_and_conflicts_refused(smoke_out):
    done = smoke_out / "smoke" / "absent" / "seed=0" / "DONE"
    before = done.stat().st_mtime_ns
    res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(smoke_out)])
    assert res.exit_code == 0 and "4 complete" in res.output
    assert done.stat().st_mtime_ns == before
    res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(smoke_out), "--set", "ppo.n_epochs=3"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert done.stat().st_mtime_ns == before
    res = CliRunner().invoke(main, ["ls", str(smoke_out)])
    assert res.exit_code == 0 and res.output.count("complete") >= 4


def test_interrupted_run_restarts_from_scratch(tmp_path):
    """Kill the runner mid-run of a spec without checkpoints; the rerun moves the partial folder aside
    and writes a whole ledger (resuming from a checkpoint: tests/test_resume.py)."""
    from rledger import Ledger

    out = tmp_path / "runs"
    args = [sys.executable, "-m", "rledger.cli", "run", str(SMOKE), "--out", str(out), "--seeds", "0",
            "--set", "train=[absent]", "--set", "total_timesteps=20000", "--set", "checkpoint_every=0"]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    run = out / "smoke" / "absent" / "seed=0"
    deadline = time.time() + 120
    while not list((run / "ledger" / "samples").glob("part-*.parquet")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # kill it somewhere inside a later rollout
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_unlocked(run)  # the worker that holds the run's lock was killed too, but may take a moment to exit
    assert not (run / "DONE").exists()
    partial_parts = list((run / "ledger" / "samples").glob("part-*.parquet"))
    assert partial_parts, "the killed run had written some rollouts"
    # a SIGKILL may leave a hidden temporary file, but every file under a final name is whole
    import pyarrow.parquet as pq

    for part in run.rglob("part-*.parquet"):
        pq.read_table(part)
    res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(out), "--seeds", "0", "--set", "train=[absent]",
                                    "--set", "total_timesteps=20000", "--set", "checkpoint_every=0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (run / "DONE").is_file()
    aside = list(run.parent.glob("seed=0.partial-*"))
    assert len(aside) >= 1
    tr = Ledger(run / "ledger").transitions(columns=["rollout", "t", "env"])
    per_rollout = 2 * 128  # n_envs * n_steps
    assert len(tr) == -(-20000 // per_rollout) * per_rollout and not tr.duplicated().any()


def test_ray_backend_on_a_real_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    from rledger import Ledger

    out = tmp_path / "runs"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = CliRunner().invoke(main, ["run", str(SMOKE), "--out", str(out), "--backend", "ray"])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    dirs = sorted(out.glob("smoke/*/seed=*"))
    assert len(dirs) == 4 and all((d / "DONE").is_file() for d in dirs)
    assert len(Ledger(dirs[0] / "ledger").samples(columns=["t"])) > 0


FAILING = {
    "name": "fails",
    "env": {"id": "CartPole-v1",
            "wrappers": [{"name": "envs_for_tests.FailsOnSeed", "kwargs": {"seed": 7, "after": 300}}]},
    "seeds": [0, 7],
    "total_timesteps": 1024,
    "n_envs": 2,
    "checkpoint_every": 1,
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 1},
    "eval": {"episodes": 1},
}  # fmt: skip


def _check_one_failed(out: Path, output: str) -> Path:
    failed = out / "fails" / "default" / "seed=7"
    assert "Traceback" not in output and "1 of 2 runs failed; the others are complete" in output, output
    line = f"{failed}: RuntimeError: planted failure after 300 steps (traceback: {failed / 'error.txt'})"
    assert line in output, output
    assert (out / "fails" / "default" / "seed=0" / "DONE").is_file() and not (failed / "DONE").exists()
    tb = (failed / "error.txt").read_text()
    assert tb.startswith("Traceback") and "envs_for_tests.py" in tb and "planted failure" in tb
    return failed


def test_a_failed_run_is_one_line_with_its_traceback_kept_and_resumes(tmp_path, monkeypatch):
    """A run that raises inside a pool worker: the other runs finish, the runner ends with one line per
    failed run (exit 1), its traceback in the run folder; `ls` says failed; the same command, the cause
    gone, resumes it from its checkpoint to the end and the traceback file goes."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(FAILING))
    out = tmp_path / "runs"
    monkeypatch.setenv("RLEDGER_TEST_FAIL", "1")
    cmd = ["run", str(spec), "--out", str(out), "--workers", "2"]
    res = CliRunner().invoke(main, cmd, terminal_width=400)
    assert res.exit_code == 1, res.output
    failed = _check_one_failed(out, res.output)
    assert (failed / "checkpoint.pt").is_file()
    res = CliRunner().invoke(main, ["ls", str(out)], terminal_width=400)
    assert res.exit_code == 0 and [ln for ln in res.output.splitlines() if "failed" in ln and "7" in ln]
    monkeypatch.delenv("RLEDGER_TEST_FAIL")
    res = CliRunner().invoke(main, cmd, terminal_width=400)
    assert res.exit_code == 0, res.output
    assert (failed / "DONE").is_file() and not (failed / "error.txt").exists()
    assert not list(failed.parent.glob("seed=7.partial-*"))  # resumed, not started over
    assert len((failed / "command.txt").read_text().splitlines()) == 2


def test_a_run_failing_in_a_ray_task_is_one_line_too(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(FAILING))
    out = tmp_path / "runs"
    env_vars = {
        "RLEDGER_TEST_FAIL": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env_vars})
    try:
        res = CliRunner().invoke(
            main, ["run", str(spec), "--out", str(out), "--backend", "ray"], terminal_width=400
        )
    finally:
        ray.shutdown()
    assert res.exit_code == 1, res.output
    _check_one_failed(out, res.output)


def test_opening_phase_then_the_runs_own_variant(tmp_path):
    """An opening variant trains first (here: laps rewarded), then the run's variant, one model and ledger."""
    import numpy as np

    from rledger import Ledger

    spec = ROOT / "experiments" / "probe_tiebreak_history.yaml"
    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--seeds", "0",
                                    "--set", "total_timesteps=8192", "--set", "opening.timesteps=4096",
                                    "--set", "eval.episodes=1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run = out / "probe_tiebreak_history" / "default" / "seed=0"
    assert (run / "DONE").is_file()
    tr = Ledger(run / "ledger").transitions(columns=["rollout", "reward", "clockwise"])
    opening, rest = tr[tr.rollout < 2], tr[tr.rollout >= 2]
    # clockwise moves pay the +1 bonus only in the opening phase: -1 (+3 on an arrow) (+1 bonus)
    assert set(np.unique(opening.reward[opening.clockwise == 1])) <= {0.0, 3.0}
    assert set(np.unique(rest.reward[rest.clockwise == 1])) <= {-1.0, 2.0}
    assert tr.rollout.nunique() == 4
    with pytest.raises(SpecError, match="opening.timesteps"):
        load_spec(spec, ["opening.timesteps=999999"])


def test_ppo_fields_are_sb3_ppo_arguments():
    import inspect

    from stable_baselines3 import PPO

    from rledger.experiments.spec import _PPO_RULES

    assert set(_PPO_RULES) <= set(inspect.signature(PPO.__init__).parameters)


def test_every_shipped_spec_parses():
    """Each spec in experiments/ validates (the suite file by load_suite), and every variant's env
    kwargs build the env."""
    import gymnasium as gym

    from rledger.experiments import load_spec
    from rledger.suite import load_suite

    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        if path.name == "quickstart.yaml":
            assert load_suite(path).specs
            continue
        spec = load_spec(path)
        for variant in spec.variants:
            gym.make(spec.env_id, **spec.env_kwargs_for(variant)).reset(seed=0)


def test_runner_records_the_momentum_table(tmp_path):
    """A spec asking for the momentum table (with checkpoints off) writes it beside the samples."""
    from rledger import Ledger

    spec = write_spec(
        tmp_path,
        **{
            "record.tables": ["transitions", "samples", "updates", "episodes", "momentum"],
            "checkpoint_every": 0,
        },
    )
    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--seeds", "0"])
    assert res.exit_code == 0, res.output
    done = sorted(out.rglob("DONE"))
    assert len(done) == 2  # the two variants of seed 0
    for d in done:
        ledger = Ledger(d.parent)
        samples, mom = ledger.samples(), ledger.table("momentum")
        assert len(mom) == len(samples) > 0
        assert ledger.run_info["momentum_horizon"] == 197
        assert ledger.check() == ledger.run_info["rollouts_written"]
        fresh = samples.adam_update_norm.to_numpy()
        moved = fresh > 0  # the last rollout's learning rate is 0 on lin_3e-4: no step moves
        ratio = mom.momentum_update_norm.to_numpy()[moved] / fresh[moved]
        assert moved.mean() > 0.5 and (ratio >= 1 - 1e-5).all() and ratio.max() > 1.5


def test_dose_response_spec_expands_to_six_shares_by_ten_seeds(tmp_path):
    from rledger.experiments import load_spec
    from rledger.experiments.backends import plan_runs

    spec = load_spec(ROOT / "experiments" / "relocate_dose.yaml")
    jobs = plan_runs(spec, tmp_path / "runs", overwrite=False)
    shares = {spec.run_config(v, 0)["env"]["kwargs"]["goal_anywhere"] for v in spec.train}
    assert shares == {0.0, 0.01, 0.02, 0.05, 0.1, 0.2}
    assert len(jobs) == 6 * 10
    assert {(j.config["variant"], j.config["seed"]) for j in jobs} == {
        (v, s) for v in spec.train for s in range(10)
    }
    assert all(j.config["eval"]["variants"] == {"anywhere": {"goal_anywhere": 1.0}} for j in jobs)
    assert not (tmp_path / "runs").exists()  # planning writes nothing


def test_a_zombie_does_not_hold_a_run_lock(tmp_path):
    """A runner's worker killed with it is reparented; where the container's init does not reap it, it
    stays a zombie, which ``kill(pid, 0)`` still finds. Its lock is stale all the same."""
    import socket

    from rledger.experiments.run import _alive, run_lock

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "the child did not end"
        time.sleep(0.05)  # ended, not yet reaped: a zombie
    owner = {"pid": child.pid, "host": socket.gethostname()}
    assert not _alive(owner)
    assert _alive({"pid": os.getpid(), "host": socket.gethostname()})
    run = tmp_path / "seed=0"
    lock = run.with_name(run.name + ".lock")
    lock.write_text(json.dumps(owner))
    with run_lock(run):  # taken over, not refused
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    child.wait()
