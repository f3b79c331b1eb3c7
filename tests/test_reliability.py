"""Bad input and data safety: reports never replace runs, names stay inside --out, ledger paths are
taken literally, non-finite rewards stop training with a clear message, a zeroed step records zeros."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from click.testing import CliRunner
from stable_baselines3.common.env_util import make_vec_env

from rledger import InstrumentedPPO, Ledger
from rledger.cli import main
from rledger.experiments import SpecError, plan_runs, validate
from rledger.experiments.run import command_line, execute, run_dir

TINY = {
    "name": "tiny",
    "env": {"id": "rledger/BoatRace-v0"},
    "total_timesteps": 256,
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 1},
    "eval": {"episodes": 1},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for raw in (TINY, {**TINY, "name": "report"}):  # an experiment named like the report folder
        spec = validate(raw, raw["name"])
        for job in plan_runs(spec, out, overwrite=False):
            execute(job.config, job.path, command_line())
        (out / spec.name / "spec.yaml").write_text("name: " + spec.name + "\n")
    return out


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_report_never_replaces_runs(runs, tmp_path):
    before = _files(runs)
    cases = [
        ([str(runs), "--out", str(runs), "--overwrite"], "holds the runs"),
        ([str(runs / "tiny"), "--out", str(runs), "--overwrite"], "holds the runs"),
        ([str(runs), "--overwrite"], "is a run or experiment folder"),  # default out: the 'report' experiment
        ([str(runs), "--out", str(runs / "tiny" / "default" / "seed=0" / "rep")], "inside the run folder"),
        ([str(runs), "--out", str(runs / "tiny" / "default" / "seed=0"), "--overwrite"], "run or experiment"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(main, ["report", *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    assert _files(runs) == before  # nothing deleted, nothing written
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a report")
    res = CliRunner().invoke(main, ["report", str(runs), "--out", str(foreign), "--overwrite"])
    assert res.exit_code == 2 and "not an rledger report" in res.output
    assert (foreign / "notes.txt").read_text() == "not a report"
    ok = tmp_path / "rep"
    for _ in range(2):  # a report folder, with its marker, may be replaced
        res = CliRunner().invoke(main, ["report", str(runs), "--out", str(ok), "--overwrite"])
        assert res.exit_code == 0, res.output
    assert (ok / ".rledger-report").is_file() and (ok / "report.md").is_file()


@pytest.mark.parametrize("name", ["..", ".", "...", "a/b"])
def test_names_are_one_path_component(name, tmp_path):
    with pytest.raises(SpecError, match="name"):
        validate({**TINY, "name": name}, "spec")
    with pytest.raises(SpecError, match="variant"):
        validate({**TINY, "variants": {name: {}}}, "spec")
    with pytest.raises(SpecError):
        run_dir(tmp_path, "ok", name, 0)
    assert not any(tmp_path.iterdir())


def test_ledger_path_with_glob_characters(tmp_path):
    """A ledger in a folder named like a glob pattern is read from its own files, by pandas and DuckDB
    alike (a sibling that the pattern would match holds other data)."""
    for name, steps in (("run[1]", 128), ("run1", 256)):
        InstrumentedPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0,
                        ledger=tmp_path / name).learn(steps)  # fmt: skip
    ledger = Ledger(tmp_path / "run[1]")
    n = len(ledger.samples(columns=["t"]))
    assert n == 2 * 64 and ledger.sql("SELECT count(*) AS n FROM samples").n.iloc[0] == n
    assert ledger.sql("SELECT count(DISTINCT rollout) AS r FROM transitions").r.iloc[0] == 2


class NanAt(gym.Wrapper):
    """CartPole whose reward is NaN on its 100th step."""

    def __init__(self, env):
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.steps += 1
        return obs, (float("nan") if self.steps == 100 else r), term, trunc, info


def test_non_finite_reward_stops_training_with_the_step(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0, wrapper_class=NanAt)
    model = InstrumentedPPO(
        "MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, ledger=tmp_path / "r"
    )
    with pytest.raises(ValueError, match=r"env 0 gave a non-finite reward \(nan.*step 35 of rollout 1"):
        model.learn(256)
    ledger = Ledger(tmp_path / "r")
    assert sorted(ledger.updates().rollout.unique()) == [0]  # the rollout before it, complete
    assert len(ledger.samples()) == 64 and ledger.samples().adam_update_norm.notna().all()


def test_zeroed_step_records_zero_shares():
    """When global clipping zeroes a step (clip factor 0, from an infinite gradient norm), every share
    of the step is 0, not 0 * inf = NaN; the gradient norms keep their values."""
    from rledger.persample.loss import columns

    inf = float("inf")
    g = th.tensor([[[1.0, 0.0], [0.0, inf]]])
    c = th.tensor([[-0.5, 1e30]])
    alpha = th.tensor([-0.5])
    cols = columns(g, g, th.tensor([inf]), c, alpha, None, None, th.tensor([0.0]))
    for name in ("adam_update_norm", "pg_adam_update_norm", "value_adam_update_norm", "self_reinforcement"):
        assert cols[name].item() == 0.0, name
    assert cols["pg_grad_norm"].item() == 0.5 and np.isinf(cols["loss_grad_norm"].item())


def test_ledger_reads_a_run_folder_and_refuses_other_folders(runs, tmp_path):
    """Ledger(run folder) is its ledger/ (the folder `rledger ls` shows); a folder that is neither a
    ledger nor a run folder (an experiment folder, a run.json without tables) is refused by name."""
    run = runs / "tiny" / "default" / "seed=0"
    a, b = Ledger(run), Ledger(run / "ledger")
    assert a.run_dir == b.run_dir and len(a.samples()) == len(b.samples()) > 0
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "run.json").write_text("{}")
    for bad in (runs / "tiny", tmp_path / "odd", tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match=f"ledger: {bad} is neither a ledger folder"):
            Ledger(bad)


def test_learn_with_progress_bar(tmp_path):
    """SB3's progress bar needs tqdm and rich, both dependencies."""
    model = InstrumentedPPO(
        "MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, ledger=tmp_path / "r"
    )
    model.learn(128, progress_bar=True)
    assert Ledger(tmp_path / "r").updates().rollout.nunique() == 2  # 128 steps: two rollouts of 64


def test_numbers_parse_as_yaml_1_2(tmp_path):
    """`--set ppo.learning_rate=1e-3` (the documented example) and `3e-4` in a spec file are floats, as
    YAML 1.2 reads them; PyYAML's safe_load alone reads them as strings, which validation refused."""
    import yaml

    from rledger.experiments import load_spec

    assert yaml.safe_load("1e-3") == "1e-3"  # what the loader before this fix saw
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        yaml.safe_dump({**TINY, "ppo": {"n_steps": 128}}).replace(
            "n_steps: 128", "n_steps: 128\n  learning_rate: 3e-4"
        )
    )
    assert load_spec(spec_file).ppo["learning_rate"] == 3e-4
    spec = load_spec(spec_file, ["ppo.learning_rate=1e-3", "ppo.ent_coef=5E-3", "train=[default]"])
    assert spec.ppo["learning_rate"] == 1e-3 and spec.ppo["ent_coef"] == 5e-3 and spec.train == ("default",)
    with pytest.raises(SpecError, match="ppo.learning_rate"):
        load_spec(spec_file, ["ppo.learning_rate=1e-3x"])


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_follow_the_umask(tmp_path, mask):
    """Ledger files (written through a temporary file and a rename) and report folders get the mode a
    plain open or mkdir would: 0666 / 0777 minus the umask, not tempfile's 0600 / 0700."""
    import subprocess
    import sys

    code = (
        "import os, sys; from pathlib import Path\n"
        f"os.umask({mask})\n"
        "from rledger.ledger.writer import atomic_write_bytes, current_umask, follow_umask\n"
        "import tempfile\n"
        "root = Path(sys.argv[1]); atomic_write_bytes(root / 'a' / 'f.bin', b'x')\n"
        "d = Path(tempfile.mkdtemp(dir=root)); follow_umask(d, directory=True); (root / 'dir').write_text(d.name)\n"
        f"assert current_umask() == {mask}, current_umask()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert (tmp_path / "a" / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    made = tmp_path / (tmp_path / "dir").read_text()
    assert made.stat().st_mode & 0o777 == 0o777 & ~mask


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no such process (pids are not reused this fast)


def test_one_writer_per_run_folder(tmp_path):
    """A live lock refuses a second writer by name, before anything is written; a dead owner's lock is
    taken over; the lock is gone once the run is complete."""
    import json
    import os
    import socket

    from rledger.experiments.run import RunLocked

    spec = validate(TINY, "tiny")
    config = spec.run_config("default", 0)
    path = run_dir(tmp_path, "tiny", "default", 0)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(RunLocked, match=rf"another runner \(pid {os.getpid()} on"):
        execute(config, path, "test")
    assert not path.exists()
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    execute(config, path, "test")
    assert (path / "DONE").is_file() and not lock.exists()
    assert not list(lock.parent.glob("*.stale-*"))


def test_two_runners_on_one_out(tmp_path):
    """Two `rledger run` of one spec into one --out at once: every run ends whole (all its rollouts in
    the ledger) and none is moved aside; a runner that meets a run being written skips it, finishes the
    others and exits 2 with one line."""
    import subprocess
    import sys

    import yaml

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY, "total_timesteps": 4096, "seeds": [0, 1]}))
    cmd = [sys.executable, "-c", "from rledger.cli import main; main()", "run", str(spec_file), "--out",
           str(tmp_path / "runs")]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):  # each finished, or skipped what the other wrote
        assert proc.returncode in (0, 2), output
        if proc.returncode == 2:
            assert "being written by another runner and were skipped" in output and "Traceback" not in output
    runs = sorted((tmp_path / "runs" / "tiny" / "default").iterdir())
    assert [r.name for r in runs] == ["seed=0", "seed=1"], runs  # no partial folder, no lock left
    for r in runs:
        ledger = Ledger(r / "ledger")
        rollouts = int(ledger.run_info["rollouts_written"])
        assert sorted(ledger.transitions().rollout.unique()) == list(range(rollouts))


def test_run_json_names_rledgers_own_code(tmp_path, monkeypatch):
    """run.json's git commit is the commit of rledger's source, not of the working directory's repo
    (a user's project), and its code fingerprint changes with any source file."""
    import json
    import subprocess

    from rledger.ledger import runinfo

    src = runinfo.SOURCE_ROOT
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q",
                    "--allow-empty", "-m", "a user's project"], check=True)  # fmt: skip
    monkeypatch.chdir(project)
    model = InstrumentedPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0,
                            ledger=tmp_path / "led")  # fmt: skip
    model.learn(64)
    info = json.loads((tmp_path / "led" / "run.json").read_text())
    expected = head.stdout.strip() if head.returncode == 0 else None  # None: rledger is no git checkout
    assert info["git_commit"] == expected
    assert info["code_fingerprint"] == runinfo.code_fingerprint()
    fake = tmp_path / "fake" / "rledger"
    fake.mkdir(parents=True)
    for f in sorted(src.rglob("*.py")):
        (fake / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        (fake / f.relative_to(src)).write_bytes(f.read_bytes())
    monkeypatch.setattr(runinfo, "SOURCE_ROOT", fake)
    runinfo.code_fingerprint.cache_clear()
    try:
        assert runinfo.code_fingerprint() == info["code_fingerprint"]  # the same files: the same print
        (fake / "envs" / "lagoon.py").write_bytes((fake / "envs" / "lagoon.py").read_bytes() + b"\n")
        runinfo.code_fingerprint.cache_clear()
        assert runinfo.code_fingerprint() != info["code_fingerprint"]
    finally:
        runinfo.code_fingerprint.cache_clear()
