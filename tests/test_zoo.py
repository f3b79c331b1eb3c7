"""rl-baselines3-zoo hyperparameter entries as rledger specs (rledger.experiments.zoo, `rledger zoo`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rledger.cli import main
from rledger.experiments import SpecError, validate
from rledger.experiments.zoo import policy_kwargs, spec_from_zoo

ZOO = Path(__file__).parent / "data" / "zoo_ppo.yml"


def test_entries_map_onto_the_spec():
    cart = spec_from_zoo(ZOO, "CartPole-v1")
    assert cart["n_envs"] == 8 and cart["total_timesteps"] == 100_000 and cart["policy"] == "MlpPolicy"
    assert cart["ppo"] == {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                           "ent_coef": 0.0, "learning_rate": "lin_0.001", "clip_range": "lin_0.2"}  # fmt: skip
    grid = spec_from_zoo(ZOO, "MiniGrid-DoorKey-5x5-v0", ["minigrid"])
    assert grid["env"]["vec_normalize"] == {"norm_obs": True, "norm_reward": False}
    assert grid["env"]["wrappers"] == [{"name": "gymnasium.wrappers.FlattenObservation", "kwargs": {}}]
    assert grid["ppo"]["policy_kwargs"] == {
        "ortho_init": False, "activation_fn": "relu", "net_arch": {"pi": [64, 64], "vf": [64, 64]},
    }  # fmt: skip
    # the zoo's "atari" entry is no gymnasium id: the spec's own check names env.id
    with pytest.raises(SpecError, match="env.id: unknown gymnasium id 'atari'"):
        spec_from_zoo(ZOO, "atari")


def test_what_the_spec_cannot_express_is_refused_and_strings_are_never_run(capfd):
    with pytest.raises(SpecError, match=r"Pendulum-v1.use_sde: the spec has no equivalent"):
        spec_from_zoo(ZOO, "Pendulum-v1")
    with pytest.raises(SpecError, match="cannot be read as data"):
        spec_from_zoo(ZOO, "Acrobot-v1")
    assert "owned" not in capfd.readouterr().out  # the string was parsed, not evaluated
    with pytest.raises(SpecError, match="no entry for 'Nope-v0'"):
        spec_from_zoo(ZOO, "Nope-v0")
    assert policy_kwargs("dict(log_std_init=-2, activation_fn=th.nn.Tanh)", "x") == {
        "log_std_init": -2, "activation_fn": "tanh",
    }  # fmt: skip
    with pytest.raises(SpecError, match="activation_fn"):
        policy_kwargs("dict(activation_fn=nn.Softsign)", "x")


def test_the_command_writes_a_spec_that_runs(tmp_path):
    out = tmp_path / "zoo_cartpole.yaml"
    res = CliRunner().invoke(main, ["zoo", str(ZOO), "CartPole-v1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    validate(yaml.safe_load(out.read_text()), "zoo")
    again = CliRunner().invoke(main, ["zoo", str(ZOO), "CartPole-v1", "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    res = CliRunner().invoke(main, ["run", str(out), "--out", str(tmp_path / "runs"),
                                    "--set", "total_timesteps=512", "--set", "eval.episodes=1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "zoo_CartPole-v1" / "default" / "seed=0" / "DONE").is_file()
