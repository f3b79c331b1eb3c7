"""Watching episodes: `rledger replay` writes GIFs of a run's evaluation episodes; decoded frame by
frame they are the env's own rgb_array frames of the episode the run's evaluation played."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageSequence

from rledger.cli import main
from rledger.experiments import plan_runs, validate
from rledger.experiments.run import command_line, execute, load_model

SPEC = {
    "name": "watch",
    "env": {"id": "rledger/Tamper-v0"},
    "variants": {"absent": {"button": "absent"}, "reachable": {"button": "reachable"}},
    "train": ["reachable"],
    "total_timesteps": 2048,
    "n_envs": 2,
    "ppo": {"n_steps": 256, "batch_size": 64, "n_epochs": 2},
    "eval": {"episodes": 2, "deterministic": True, "variants": ["absent", "reachable"]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    (job,) = plan_runs(validate(SPEC, "watch"), out, overwrite=False)
    execute(job.config, job.path, command_line())
    return job.path


def _decoded(path) -> list[np.ndarray]:
    """Every frame of the GIF, each repeated as often as its duration holds the shortest one (GIF
    writers merge identical consecutive frames into one longer frame)."""
    im = Image.open(path)
    frames = [(np.asarray(f.convert("RGB")), f.info["duration"]) for f in ImageSequence.Iterator(im)]
    unit = min(d for _, d in frames)
    return [f for f, d in frames for _ in range(round(d / unit))]


def _episode(run, variant: str, i: int) -> list[np.ndarray]:
    """The run's evaluation episode i on ``variant``, played here step by step with its model."""
    config = validate(SPEC, "watch").run_config("reachable", 0)
    env = gym.make("rledger/Tamper-v0", render_mode="rgb_array", **config["eval"]["variants"][variant])
    model = load_model(run)
    obs, _ = env.reset(seed=1_000_000 + i)
    frames = [env.render()]
    while True:
        obs, _, term, trunc, _ = env.step(model.predict(obs, deterministic=True)[0])
        frames.append(env.render())
        if term or trunc:
            return frames


def test_replay_gifs_are_the_evaluation_episodes_frame_by_frame(run, tmp_path):
    out = tmp_path / "clips"
    res = CliRunner().invoke(main, ["replay", str(run), "--episodes", "2", "--out", str(out), "--fps", "5"])
    assert res.exit_code == 0, res.output
    evaluation = json.loads((run / "eval.json").read_text())
    for variant in ("absent", "reachable"):
        for i in (0, 1):
            gif = out / f"{variant}-episode{i}.gif"
            decoded = _decoded(gif)
            want = _episode(run, variant, i)
            assert len(decoded) == len(want) == evaluation[variant]["episodes"][i]["length"] + 1
            scale = decoded[0].shape[0] // want[0].shape[0]
            assert scale == 2  # the default --scale
            for got, frame in zip(decoded, want, strict=True):
                np.testing.assert_array_equal(got[::scale, ::scale], frame)
            assert Image.open(gif).info["loop"] == 0
    if shutil.which("ffmpeg"):
        assert (out / "absent-episode0.mp4").stat().st_size > 0
    else:
        assert not list(out.glob("*.mp4"))


def test_replay_refuses_bad_input_and_writes_nothing(run, tmp_path):
    out = tmp_path / "clips"
    cases = [
        ([str(run.parent)], "not a complete run folder"),
        ([str(run), "--variant", "nope"], "--variant: 'nope'"),
        ([str(run), "--episodes", "0"], "--episodes"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(main, ["replay", *args, "--out", str(out)])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not out.exists()
    assert (
        CliRunner().invoke(main, ["replay", str(run), "--out", str(out), "--variant", "absent"]).exit_code
        == 0
    )
    before = (out / "absent-episode0.gif").stat().st_mtime_ns
    res = CliRunner().invoke(main, ["replay", str(run), "--out", str(out), "--variant", "absent"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "absent-episode0.gif").stat().st_mtime_ns == before
    # a run without policy.npz needs --trust-pickles (its model.zip would be unpickled)
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "policy.npz").unlink()
    res = CliRunner().invoke(main, ["replay", str(old)])
    assert res.exit_code == 2 and "--trust-pickles" in res.output and not (old / "replay").exists()
    assert CliRunner().invoke(main, ["replay", str(old), "--trust-pickles"]).exit_code == 0
