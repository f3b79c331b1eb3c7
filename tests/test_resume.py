"""Resuming: a saved model continues its ledger (load-and-continue), and an interrupted runner run,
killed with SIGKILL at several points, resumes from its last checkpoint with a ledger equal to an
uninterrupted run's, table by table and bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import yaml
from runlock import wait_unlocked

from rledger import InstrumentedPPO, Ledger
from rledger.experiments.checkpoint import CHECKPOINT

CLI = [sys.executable, "-c", "from rledger.cli import main; main()"]
SPEC = {
    "name": "tiny",
    "env": {"id": "rledger/BoatRace-v0"},
    "seeds": [0],
    "total_timesteps": 4096,  # 16 rollouts of 2 x 128 steps
    "n_envs": 2,
    "checkpoint_every": 3,
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 2, "learning_rate": "lin_3e-4"},
    "record": {"info_keys": ["hidden_reward"]},
    "eval": {"episodes": 40},  # long enough to be killed in
}
OPENING = {  # the tamper room: 6 rollouts with the button absent, then 10 with it reachable
    **SPEC,
    "env": {"id": "rledger/Tamper-v0"},
    "variants": {"absent": {"button": "absent"}, "reachable": {"button": "reachable"}},
    "train": ["reachable"],
    "opening": {"variant": "absent", "timesteps": 1536},
    "record": {"info_keys": ["pressed"]},
}


def _run(spec: dict, out: Path, tmp: Path) -> subprocess.CompletedProcess:
    file = tmp / f"{spec['env']['id'].split('/')[1]}.yaml"
    file.write_text(yaml.safe_dump(spec))
    return subprocess.run([*CLI, "run", str(file), "--out", str(out)], capture_output=True, text=True)


def _folder(spec: dict, out: Path) -> Path:
    return out / "tiny" / spec.get("train", ["default"])[0] / "seed=0"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each spec run once without interruption (when first asked for): the reference."""
    tmp = tmp_path_factory.mktemp("reference")
    done: dict[str, Path] = {}

    def reference(name: str) -> Path:
        if name not in done:
            spec = SPEC if name == "plain" else OPENING
            res = _run(spec, tmp / name, tmp)
            assert res.returncode == 0, res.stdout + res.stderr
            done[name] = _folder(spec, tmp / name)
        return done[name]

    return reference


def _manifests(run: Path) -> int:
    folder = run / "ledger" / "manifest"
    return len(list(folder.glob("part-*.json"))) if folder.is_dir() else 0


def _checkpoint_rollouts(run: Path) -> int | None:
    import torch as th

    file = run / CHECKPOINT
    try:
        return int(th.load(file, weights_only=False)["rollouts"]) if file.is_file() else None
    except Exception:  # noqa: BLE001 - being replaced right now
        return None


def _run_and_kill(spec: dict, tmp: Path, cond) -> tuple[list[str], Path]:
    """Start ``rledger run`` on ``spec`` (out: ``tmp/runs``), SIGKILL its process group once ``cond``
    holds on the run folder (checked every 10 ms), and wait until the lock is free; returns the
    command and the run folder."""
    file = tmp / "spec.yaml"
    file.write_text(yaml.safe_dump(spec))
    cmd = [*CLI, "run", str(file), "--out", str(tmp / "runs")]
    run = _folder(spec, tmp / "runs")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        end = time.monotonic() + 300
        while not cond(run) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before the kill point"
        assert cond(run), "timed out waiting for the kill point"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_unlocked(run)  # the pool worker dies with the runner (PR_SET_PDEATHSIG)
    return cmd, run


KILL_POINTS = {
    # name: (spec, condition on the run folder, checked every 10 ms)
    "between checkpoints": ("plain", lambda r: _checkpoint_rollouts(r) == 6 and _manifests(r) >= 8),
    "at a checkpoint": ("plain", lambda r: _checkpoint_rollouts(r) == 9),
    "before the first checkpoint": ("plain", lambda r: _manifests(r) >= 2),
    "in evaluation": ("plain", lambda r: (r / "model.zip").is_file()),
    "in the opening": ("opening", lambda r: _checkpoint_rollouts(r) == 3 and _manifests(r) >= 4),
    "after the opening": ("opening", lambda r: _checkpoint_rollouts(r) == 9 and _manifests(r) >= 10),
    # killed between checkpoints, then a rollout before the checkpoint loses its manifest: the
    # checkpoint cannot be continued, and the run starts over
    "with a broken ledger": ("plain", lambda r: _checkpoint_rollouts(r) == 6 and _manifests(r) >= 8),
}


@pytest.mark.parametrize(
    "point",
    [
        "between checkpoints",
        *(pytest.param(p, marks=pytest.mark.slow) for p in KILL_POINTS if p != "between checkpoints"),
    ],
)
def test_killed_run_resumes_to_the_uninterrupted_ledger(tmp_path, uninterrupted, point):
    """SIGKILL to the runner's process group at ``point``; the same command then resumes the run from
    its last checkpoint (or starts it over when it had none), and the ledger equals the uninterrupted
    run's in every table, bit for bit, as do the final weights and the evaluation."""
    name, cond = KILL_POINTS[point]
    spec = SPEC if name == "plain" else OPENING
    cmd, run = _run_and_kill(spec, tmp_path, cond)
    assert not (run / "DONE").exists()
    if point == "with a broken ledger":
        (run / "ledger" / "manifest" / "part-000002.json").unlink()
    had_checkpoint = (run / CHECKPOINT).is_file() and point != "with a broken ledger"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run / "DONE").is_file() and not (run / CHECKPOINT).exists()
    aside = list(run.parent.glob("seed=0.partial-*"))
    assert len(aside) == (0 if had_checkpoint else 1), aside  # resumed in place, or started over
    if had_checkpoint:
        assert (run / "command.txt").read_text().count("rledger run") == 2
    reference = uninterrupted(name)
    a, b = Ledger(reference), Ledger(run)
    assert a.check() == b.check() == 16
    for table in ("transitions", "samples", "updates", "episodes"):
        pd.testing.assert_frame_equal(a.table(table), b.table(table), check_exact=True, obj=table)
    wa, wb = np.load(reference / "policy.npz"), np.load(run / "policy.npz")
    assert wa.files == wb.files and all(np.array_equal(wa[k], wb[k]) for k in wa.files)
    assert (reference / "eval.json").read_text() == (run / "eval.json").read_text()


def test_a_changed_spec_starts_over_instead_of_resuming(tmp_path):
    """A partial run with a checkpoint, but the spec changed since: it is moved aside and rerun."""
    out = tmp_path / "runs"
    spec = {**SPEC, "total_timesteps": 1536, "eval": {"episodes": 1}}
    assert _run({**spec, "checkpoint_every": 2}, out, tmp_path).returncode == 0
    run = _folder(spec, out)
    (run / "DONE").unlink()  # as if killed after its last checkpoint: partial, with a checkpoint
    import shutil

    shutil.copy(run / "policy.npz", tmp_path / "first.npz")
    (run / CHECKPOINT).write_bytes(b"not a checkpoint")  # unreadable: starts over
    res = _run(spec, out, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(list(run.parent.glob("seed=0.partial-*"))) == 1
    changed = {**spec, "ppo": {**spec["ppo"], "n_epochs": 1}}
    (run / "DONE").unlink()
    res = _run(changed, out, tmp_path)  # no checkpoint left, and another config: starts over
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(list(run.parent.glob("seed=0.partial-*"))) == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["ppo"]["n_epochs"] == 1


def test_a_checkpoint_from_other_code_starts_over(tmp_path, monkeypatch):
    """A checkpoint written by other code is not resumed: an env pickled by an older version of its
    class can lack what the new code reads (a lagoon pickled before its start cells existed failed
    at its first reset, and the run with it). Killed after a checkpoint, the run is rerun from the
    start (the partial folder moved aside) when the checkpoint's code differs."""
    import torch as th

    from rledger.experiments import checkpoint

    cmd, run = _run_and_kill(SPEC, tmp_path, lambda r: _checkpoint_rollouts(r) is not None)
    assert checkpoint.read(run) is not None  # this code wrote it: usable
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "code_fingerprint", lambda: "other code")
        assert checkpoint.read(run) is None
    state = th.load(run / CHECKPOINT, weights_only=False)
    state["code"] = "0" * 64  # as if an older rledger had written it
    checkpoint.write(run / CHECKPOINT, state)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(list(run.parent.glob("seed=0.partial-*"))) == 1
    assert (run / "DONE").is_file()
    assert (run / "command.txt").read_text().count("rledger run") == 1  # started over, not resumed


def test_checkpoint_every_is_not_part_of_a_runs_identity(tmp_path):
    """A complete run is the same run whatever its checkpoint interval: not rerun, not a conflict."""
    out = tmp_path / "runs"
    spec = {**SPEC, "total_timesteps": 512, "eval": {"episodes": 1}}
    assert _run(spec, out, tmp_path).returncode == 0
    done = _folder(spec, out) / "DONE"
    before = done.stat().st_mtime_ns
    res = _run({**spec, "checkpoint_every": 0}, out, tmp_path)
    assert res.returncode == 0 and "1 complete" in res.stdout, res.stdout + res.stderr
    assert done.stat().st_mtime_ns == before


# --- load and continue ------------------------------------------------------------------------------


def _cartpole(ledger, **kw) -> InstrumentedPPO:
    return InstrumentedPPO(
        "MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, ledger=ledger,
        info_keys=kw.pop("info_keys", ()), **kw,
    )  # fmt: skip


def test_load_continues_the_ledger(tmp_path):
    """Train 3 rollouts, save, load with ledger=: 2 more rollouts go on as rollouts 3 and 4, the
    optimizer's step count goes on, no episode number repeats, and the ledger checks whole."""
    ledger = tmp_path / "ledger"
    model = _cartpole(ledger)
    model.learn(192)
    model.save(tmp_path / "model.zip")
    steps = Ledger(ledger).updates().opt_step.max()
    loaded = InstrumentedPPO.load(tmp_path / "model.zip", env=gym.make("CartPole-v1"), ledger=ledger)
    assert loaded.ledger_dir == str(ledger)
    loaded.learn(128, reset_num_timesteps=False)
    led = Ledger(ledger)
    assert led.check() == 5
    up = led.updates()
    assert sorted(up.rollout.unique()) == [0, 1, 2, 3, 4]
    assert up[up.rollout == 3].opt_step.min() == steps + 1  # Adam's state was loaded and goes on
    tr = led.transitions(columns=["rollout", "episode"])
    assert tr.groupby("rollout").size().tolist() == [64] * 5
    # the episode running at save time is not continued: rollout 3 starts a new episode number
    assert tr[tr.rollout == 3].episode.min() == tr[tr.rollout == 2].episode.max() + 1
    ep = led.episodes()
    assert not ep.duplicated(["env", "episode"]).any()
    assert (led.samples(columns=["rollout"]).rollout.unique() == [0, 1, 2, 3, 4]).all()


def test_load_from_a_run_folder_and_cut_back(tmp_path):
    """attach_ledger accepts the run folder too, and continuing after fewer rollouts than the ledger
    holds removes the later ones when learn() starts (never before)."""
    run = tmp_path / "run"
    (run / "ledger").mkdir(parents=True)
    model = _cartpole(run / "ledger")
    model.learn(256)  # rollouts 0-3
    model.attach_ledger(run, rollouts=2)
    assert Ledger(run).check() == 4  # nothing removed yet
    model.learn(64, reset_num_timesteps=False)
    led = Ledger(run)
    assert led.check() == 3
    assert sorted(led.updates().rollout.unique()) == [0, 1, 2]
    assert not list((run / "ledger" / "samples").glob("part-000003*"))


def test_attach_refuses_a_ledger_recorded_otherwise(tmp_path):
    ledger = tmp_path / "ledger"
    _cartpole(ledger).learn(64)
    model = _cartpole(None, info_keys=())
    model.info_keys = ("x",)
    with pytest.raises(ValueError, match="info_keys"):
        model.attach_ledger(ledger)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a ledger"):
        _cartpole(None).attach_ledger(other)
    with pytest.raises(Exception, match="holds 1 rollouts"):
        _cartpole(None).attach_ledger(ledger, rollouts=5)
    assert (other / "notes.txt").read_text() == "mine"
