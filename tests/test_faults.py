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
from test_reliability import TINY as RELIABILITY_TINY

from rledger import Ledger

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

SPEC = {
    "name": "tiny",
    "env": {"id": "rledger/BoatRace-v0"},
    "seeds": [0, 1],
    "total_timesteps": 6144,
    "checkpoint_every": 0,  # interrupted runs start over (resuming: tests/test_resume.py)
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


# --- files: corrupted, crafted, and what a killed writer leaves ------------------------------------

TINY = {**RELIABILITY_TINY, "total_timesteps": 512}  # four rollouts: parts 0-3 to corrupt


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    from rledger.experiments import plan_runs, validate
    from rledger.experiments.run import command_line, execute

    out = tmp_path_factory.mktemp("complete")
    spec = validate(TINY, "tiny")
    (job,) = plan_runs(spec, out, overwrite=False)
    execute(job.config, job.path, command_line())
    return job.path


def _two_runs(complete_run: Path, root: Path) -> tuple[Path, Path]:
    """``root/tiny/default/seed=0`` and ``seed=1``, copies of one complete run."""
    import shutil

    runs = []
    for seed in (0, 1):
        dest = root / "tiny" / "default" / f"seed={seed}"
        shutil.copytree(complete_run, dest)
        runs.append(dest)
    (root / "tiny" / "spec.yaml").write_text(yaml.safe_dump(TINY))
    return runs[0], runs[1]


def test_policy_npz_is_the_trained_policy(complete_run):
    """load_model rebuilds the policy from config.yaml and policy.npz: the same parameters and the
    same actions as PPO.load of model.zip; without policy.npz it refuses unless trusted."""
    import shutil

    import numpy as np
    import torch as th
    from stable_baselines3 import PPO

    from rledger.experiments.run import UntrustedModel, load_model

    ours, theirs = load_model(complete_run), PPO.load(complete_run / "model.zip", device="cpu")
    a, b = ours.policy.state_dict(), theirs.policy.state_dict()
    assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a)
    obs = np.stack([ours.observation_space.sample() for _ in range(64)])
    assert np.array_equal(
        ours.predict(obs, deterministic=True)[0], theirs.predict(obs, deterministic=True)[0]
    )
    legacy = complete_run.parent / "legacy"
    shutil.copytree(complete_run, legacy)
    (legacy / "policy.npz").unlink()
    with pytest.raises(UntrustedModel, match="no policy.npz .* pass --trust-pickles"):
        load_model(legacy)
    assert load_model(legacy, trust_pickles=True).policy.state_dict().keys() == a.keys()


def _plant_payload(model_zip: Path, marker: Path) -> None:
    """Rewrite ``model_zip`` so that unpickling it (PPO.load) creates ``marker``: the attack the
    pickle-free weights close."""
    import base64
    import json
    import pickle
    import zipfile

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    with zipfile.ZipFile(model_zip) as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = json.loads(files["data"])
    data["policy_class"][":serialized:"] = base64.b64encode(pickle.dumps(Payload())).decode()
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)


def test_crafted_model_zip_runs_no_code(complete_run, tmp_path):
    """A model.zip whose unpickling runs code: `rledger report` never unpickles it (policy.npz is
    read instead); without policy.npz it refuses (exit 2) unless --trust-pickles, which does run it."""
    from click.testing import CliRunner

    from rledger.cli import main

    marker = tmp_path / "payload-ran"
    runs = _two_runs(complete_run, tmp_path / "runs")
    for run in runs:
        _plant_payload(run / "model.zip", marker)
    root = tmp_path / "runs"
    result = CliRunner().invoke(main, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    for run in runs:
        (run / "policy.npz").unlink()
    result = CliRunner().invoke(main, ["report", str(root), "--overwrite"])
    assert result.exit_code == 2 and "pass --trust-pickles" in result.output, result.output
    assert not marker.exists()
    result = CliRunner().invoke(main, ["report", str(root), "--overwrite", "--trust-pickles"])
    assert marker.exists()  # the payload is live: the flag is what stands between it and the user


def _corrupt(path: Path, how: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes((i * 97 + 13) % 256 for i in range(len(data))))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "foreign schema":
        pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    else:
        raise ValueError(how)


PARTS = [f"ledger/{t}/part-000001.parquet" for t in ("transitions", "samples", "updates", "episodes")]
METADATA = ["ledger/run.json", "ledger/manifest/part-000002.json", "config.yaml", "DONE"]
CASES = [(f, how) for f in PARTS for how in ("truncated", "garbage", "empty", "foreign schema")] + [
    (f, how) for f in METADATA for how in ("truncated", "garbage", "empty")
]


@pytest.mark.parametrize("file, how", CASES)
def test_a_corrupted_file_is_named_and_its_run_left_out(complete_run, tmp_path, file, how):
    """Each table's part and each metadata file, truncated, garbage or empty (parts also with a foreign
    schema): the run is left out of the report's runs with a message naming the file, the other run
    is kept; strict reading raises; reading the ledger names the file."""
    from rledger.analysis.common import find_runs
    from rledger.ledger import LedgerError

    good, bad = _two_runs(complete_run, tmp_path / "runs")
    if how != "garbage" or not file.endswith(".json") and file != "DONE" and file != "config.yaml":
        _corrupt(bad / file, how)
    else:
        (bad / file).write_text("{ not json: [")
    broken: list[str] = []
    runs = find_runs(tmp_path / "runs", broken=broken)
    assert [r.path for r in runs] == [good]
    assert len(broken) == 1 and str(bad / file) in broken[0], broken
    assert "\n" not in broken[0]
    with pytest.raises(ValueError, match=str(bad / file).replace("[", r"\[")):
        find_runs(tmp_path / "runs")
    if file.startswith("ledger/") and "manifest" not in file:
        from rledger import Ledger

        with pytest.raises(LedgerError, match=str(bad / file)):
            ledger = Ledger(bad)
            for table in ("transitions", "samples", "updates", "episodes"):
                ledger.table(table)


def test_report_and_ls_leave_out_a_broken_run_or_exit_2_when_strict(complete_run, tmp_path):
    from click.testing import CliRunner

    from rledger.cli import main

    good, bad = _two_runs(complete_run, tmp_path / "runs")
    _corrupt(bad / "ledger/samples/part-000000.parquet", "truncated")
    (bad.parent / "seed=2").mkdir()
    (bad.parent / "seed=2" / "config.yaml").write_text(":\n  - [unclosed")
    root = tmp_path / "runs"
    result = CliRunner().invoke(main, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert "2 runs left out" in result.output and "part-000000.parquet" in result.output
    assert "seed=2/config.yaml" in result.output
    assert "1 complete runs" in (root / "report" / "report.md").read_text()
    result = CliRunner().invoke(main, ["report", str(root), "--out", str(tmp_path / "r2"), "--strict"])
    assert result.exit_code == 2 and "--strict" in result.output and not (tmp_path / "r2").exists()
    result = CliRunner().invoke(main, ["ls", str(root)])
    assert result.exit_code == 0 and "seed=2/config.yaml" in result.output
    result = CliRunner().invoke(main, ["ls", str(root), "--strict"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["summary", str(bad)])
    assert (
        result.exit_code == 2 and "part-000000.parquet" in result.output and "Traceback" not in result.output
    )


def test_garbage_done_is_refused_by_name_or_rerun_with_overwrite(tmp_path):
    from click.testing import CliRunner

    from rledger.cli import main

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    args = ["run", str(spec_file), "--out", str(tmp_path / "runs")]
    assert CliRunner().invoke(main, args).exit_code == 0
    done = tmp_path / "runs" / "tiny" / "default" / "seed=0" / "DONE"
    done.write_text("garbage")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and str(done) in result.output and "--overwrite" in result.output
    assert done.read_text() == "garbage"  # nothing written
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert json_load(done)["seed"] == 0


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _train(out: Path, timesteps: int) -> list[str]:
    """`rledger train` of CartPole into ``out``, rollouts of 256 steps."""
    return [
        *CLI,
        "train",
        "--env",
        "CartPole-v1",
        "--timesteps",
        str(timesteps),
        "--n-steps",
        "256",
        "--out",
        str(out),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("after_rollouts", [1, 5, 9, 14])
def test_killed_train_leaves_whole_rollouts_and_the_next_start_cleans_up(tmp_path, after_rollouts):
    """kill -9 of `rledger train` while it writes: readers see only whole rollouts (every table a
    rollout's manifest lists, nothing of a rollout without one); the next start with --overwrite moves
    the folder aside, removes the temporary files and completes the run."""
    from rledger.ledger.writer import MANIFEST

    out = tmp_path / "run"
    cmd = _train(out, 8192)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(
            lambda: _rollouts_on_disk(out / "ledger") >= after_rollouts or proc.poll() is not None,
            300,
            f"{after_rollouts} rollouts",
        )
        assert proc.poll() is None, "training ended before the kill point"
        time.sleep(0.013 * after_rollouts)  # somewhere inside a rollout's writes
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "DONE").exists()
    ledger = Ledger(out)
    whole = sorted(int(p.stem.split("-")[1]) for p in (out / "ledger" / MANIFEST).glob("part-*.json"))
    assert whole == list(range(len(whole))) and len(whole) >= after_rollouts - 1
    for table in ("transitions", "samples", "updates"):
        assert sorted(ledger.table(table, columns=["rollout"]).rollout.unique()) == whole, table
    rerun = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (out / "DONE").is_file() and Ledger(out).check() == 8192 // 256
    assert not [p for p in tmp_path.rglob("*.tmp")], "temporary files left after the next start"
    assert len(list(tmp_path.glob("run.partial-*"))) == 1


def _limit_file_size(limit: int):
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_file_size_limit_is_one_line_and_leaves_no_temp_file(tmp_path):
    """A real limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG): `rledger train`
    exits 2 with one line naming the file it was writing, and no temporary file is left."""
    out = tmp_path / "run"
    cmd = _train(out, 4096)
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(60_000)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert message.startswith("Error: ") and "\n" not in message and "Traceback" not in result.stderr
    assert "File too large" in message and str(out) in message
    assert not [p for p in tmp_path.rglob("*.tmp")] and not (out / "DONE").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs mounted at tmp_path/disk, where mounting is permitted (root with CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (the RLIMIT_FSIZE test covers a full disk)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_and_read_only_folder(small_tmpfs):
    """A real full filesystem (a 3 MB tmpfs), then the same filesystem read-only: one line naming the
    file, exit 2, no temporary file."""
    out = small_tmpfs / "run"
    cmd = _train(out, 8192)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and "No space left on device" in message and str(small_tmpfs) in message
    assert not [p for p in small_tmpfs.rglob("*.tmp")]
    assert (
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True).returncode == 0
    )
    result = subprocess.run(
        [*cmd[:-1], str(small_tmpfs / "other")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip()
    assert (
        "\n" not in message and "Read-only file system" in message and str(small_tmpfs / "other") in message
    )


def test_names_read_back_from_a_run_folder_stay_names(complete_run, tmp_path):
    """A config.yaml whose experiment name would lead outside the report folder: the run is left out."""
    from rledger.analysis.common import find_runs

    good, bad = _two_runs(complete_run, tmp_path / "runs")
    config = yaml.safe_load((bad / "config.yaml").read_text())
    config["experiment"] = "../../outside"
    (bad / "config.yaml").write_text(yaml.safe_dump(config))
    broken: list[str] = []
    assert [r.path for r in find_runs(tmp_path / "runs", broken=broken)] == [good]
    assert "experiment '../../outside' is not a name" in broken[0]


def test_analysis_scripts_load_no_pickles_unless_told(complete_run, tmp_path):
    """`python analysis/reinforcement_maps.py ROOT`: a run without policy.npz is refused (exit 2, one
    line) unless --trust-pickles; a broken run is left out with a line, or exit 2 under --strict."""
    script = Path(__file__).parent.parent / "analysis" / "reinforcement_maps.py"
    good, legacy = _two_runs(complete_run, tmp_path / "runs")
    (legacy / "policy.npz").unlink()
    cmd = [sys.executable, str(script), str(tmp_path / "runs"), "--out", str(tmp_path / "a")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "--trust-pickles" in result.stderr and "Traceback" not in result.stderr
    assert subprocess.run([*cmd, "--trust-pickles"], capture_output=True, timeout=600).returncode == 0
    _corrupt(legacy / "ledger/updates/part-000000.parquet", "garbage")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "left out" in result.stderr and "part-000000.parquet" in result.stderr
    result = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "part-000000.parquet" in result.stderr


def test_a_killed_report_leaves_nothing_the_next_one_keeps(complete_run, tmp_path):
    """`rledger report` killed (kill -9) while writing: its temporary folder is removed by the next
    report, which writes the report whole; a temporary folder of a live process is kept."""
    import shutil

    _two_runs(complete_run, tmp_path / "runs")
    root = tmp_path / "runs"
    proc = subprocess.Popen([*CLI, "report", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(
        lambda: list(root.glob(".report-*")) or proc.poll() is not None, 120, "the report's temporary folder"
    )
    proc.kill()
    proc.wait()
    left = [p for p in root.glob(".report-*") if p.is_dir()]
    if not left:  # the report finished before the kill: leave one as a killed report would
        shutil.copytree(root / "report", root / f".report-{proc.pid}-abc")
        shutil.rmtree(root / "report")
    live = root / f".report-{os.getpid()}-mine"
    live.mkdir()
    result = subprocess.run(
        [*CLI, "report", str(root), "--overwrite"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in root.glob(".report-*")] == [live.name]
    assert (root / "report" / "report.html").is_file()
