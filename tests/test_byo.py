"""Bring your own setup: a spec's env imports, wrappers, VecNormalize, frame stacking, policy class
and policy_kwargs, run end to end with real envs (CartPole, MiniGrid) and real SB3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from rledger import Ledger
from rledger.cli import main
from rledger.experiments import environment, load_spec

ROOT = Path(__file__).resolve().parents[1]
NORM_SPEC = {
    "name": "byo",
    "env": {
        "id": "CartPole-v1",
        "wrappers": [{"name": "TimeLimit", "kwargs": {"max_episode_steps": 60}}],
        "vec_normalize": {"norm_obs": True, "norm_reward": True},
        "frame_stack": 2,
    },
    "seeds": [0],
    "total_timesteps": 1024,
    "n_envs": 2,
    "ppo": {"n_steps": 256, "batch_size": 64, "n_epochs": 2,
            "policy_kwargs": {"features_extractor_class": "FlattenExtractor", "net_arch": [32]}},
    "record": {"every": 1},
    "eval": {"episodes": 3},
}  # fmt: skip


def _run(tmp_path: Path, raw: dict, *extra: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "out"), *extra])
    assert res.exit_code == 0, res.output
    return tmp_path / "out" / raw["name"] / "default" / "seed=0"


def test_wrappers_normalization_and_frame_stack_end_to_end(tmp_path):
    run = _run(tmp_path, NORM_SPEC)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["record"]["info_keys"] == ["raw_reward"]  # added because the reward is normalized
    led = Ledger(run / "ledger")
    tr = led.transitions(columns=["rollout", "reward", "raw_reward"])
    assert (tr.raw_reward == 1.0).all() and tr.reward.std() > 0  # CartPole pays 1; PPO saw it normalized
    ep = led.episodes()
    assert (ep.length <= 60).all()  # the spec's TimeLimit wrapper
    np.testing.assert_allclose(ep.raw_reward, ep.length)  # the raw return: 1 per step
    assert (run / environment.VEC_NORMALIZE).is_file()
    ev = json.loads((run / "eval.json").read_text())["default"]
    for e in ev["episodes"]:  # evaluation sees the env's reward (not normalized), at most 60 steps
        assert e["return"] == e["length"] == e["raw_reward"] and e["length"] <= 60
    # the model rebuilds for analysis with the run's observation space (2 stacked frames of 4)
    from rledger.experiments.run import load_model

    assert load_model(run).observation_space.shape == (8,)


def test_normalization_statistics_round_trip_and_carry_over(tmp_path):
    config = load_spec_dict(NORM_SPEC)
    venv = environment.make_vec(config, {}, n_envs=2, seed=0)
    venv.reset()
    for _ in range(50):
        venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
    environment.save_normalize(venv, tmp_path / "n.npz")
    fresh = environment.make_vec(config, {}, n_envs=1, seed=None, training=False)
    environment.load_normalize(fresh, tmp_path / "n.npz")
    a, b = environment.find_normalize(venv), environment.find_normalize(fresh)
    assert np.array_equal(a.obs_rms.mean, b.obs_rms.mean) and np.array_equal(a.obs_rms.var, b.obs_rms.var)
    assert a.obs_rms.count == b.obs_rms.count and a.ret_rms.var == b.ret_rms.var
    assert not b.training and not b.norm_reward  # evaluation: frozen statistics, the env's reward
    other = environment.make_vec(config, {}, n_envs=2, seed=1)
    environment.carry_normalize(venv, other)  # an opening's switch of env keeps the statistics
    assert np.array_equal(environment.find_normalize(other).obs_rms.mean, a.obs_rms.mean)
    assert environment.find_normalize(other).obs_rms is not a.obs_rms


def load_spec_dict(raw: dict) -> dict:
    from rledger.experiments import validate

    return validate(raw, "byo").run_config("default", 0)


def test_an_env_that_cannot_be_pickled_runs_without_checkpoints(tmp_path, capfd):
    raw = {**NORM_SPEC, "name": "locked", "checkpoint_every": 1,
           "env": {"id": "CartPole-v1", "wrappers": ["envs_for_tests.HoldsALock"]}}  # fmt: skip
    run = _run(tmp_path, raw)
    assert (run / "DONE").is_file() and not (run / "checkpoint.pt").exists()
    assert "checkpoints off, the env cannot be pickled" in capfd.readouterr().err


@pytest.mark.slow  # trains and reports a MiniGrid run
def test_minigrid_doorkey_spec_runs_and_reports(tmp_path):
    pytest.importorskip("minigrid", reason="MiniGrid is not installed (pip install -e '.[minigrid]')")
    spec = ROOT / "experiments" / "minigrid_doorkey.yaml"
    assert load_spec(spec).env_options["import"] == ["minigrid"]
    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--seeds", "0",
                                    "--set", "total_timesteps=2048", "--set", "checkpoint_every=1",
                                    "--set", "eval.episodes=1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run = out / "minigrid_doorkey" / "default" / "seed=0"
    led = Ledger(run / "ledger")
    assert led.samples(columns=["rollout"]).rollout.nunique() == 2  # 8 envs x 128 steps per rollout
    assert len(led.transitions(columns=["t"])) == 2048
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "minigrid_doorkey" in (out / "report" / "report.md").read_text()
