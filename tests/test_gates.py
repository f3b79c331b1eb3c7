"""The probes' gates on constructed cases: identical observations, untouched first-layer weights, a
competent and an incompetent subject."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch as th

import rledger.envs  # noqa: F401
from rledger.experiments.run import load_parameters, save_parameters
from rledger.probes import gates
from rledger.probes.policies import PlannerPolicy, RandomPolicy


class Constant:
    """Always the same action (up): never leaves the bottom-left start's column."""

    name = "up"

    def reset(self, seed: int) -> None:
        return None

    def act(self, obs, info, t):
        return 0


def test_identical_observations_are_not_perceivable():
    """The inert lagoon looks like the paying one until entered: along a random policy's trajectories
    the inputs never differ before it enters the lagoon. Over whole episodes started inside the lagoon
    with the rewards in the observation, they do (a target that pays shows in the reward frames)."""
    before = gates.perceivable(
        "rledger/Lagoon-v0", {"lagoon": "open"}, {"lagoon": "inert"}, RandomPolicy(), 6, 0, "in_lagoon"
    )
    assert before.shape == (12,) and not before.any()
    start = {"start": "lagoon", "reward_frames": 4}
    whole = gates.perceivable(
        "rledger/Lagoon-v0", {"lagoon": "open", **start}, {"lagoon": "inert", **start}, RandomPolicy(), 6, 0,
        "in_lagoon", scope="episode",
    )  # fmt: skip
    assert whole.any()
    # without the reward frames the same episodes look the same throughout
    plain = gates.perceivable(
        "rledger/Lagoon-v0", {"lagoon": "open", "start": "lagoon"}, {"lagoon": "inert", "start": "lagoon"},
        RandomPolicy(), 6, 0, "in_lagoon", scope="episode",
    )  # fmt: skip
    assert not plain.any()


def test_replay_detects_a_difference_at_the_first_step():
    """Different layouts (the button drawn or not) differ in the very first observation."""
    d = gates.perceivable(
        "rledger/Tamper-v0", {"button": "reachable"}, {"button": "absent"}, RandomPolicy(), 2, 0, "pressed"
    )
    assert d.all()


def test_untouched_first_layer_weights_are_found(tmp_path):
    """PPO trained with the button absent: the input features that show the button never were 1 in
    training, so the first-layer columns that read them stay at their initial values exactly, while
    the columns of features seen in training moved."""
    from stable_baselines3 import PPO

    env = gym.make("rledger/Tamper-v0", button="absent")
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    save_parameters(model.policy, tmp_path / "init.npz")
    model.learn(256)
    initial = load_parameters(tmp_path / "init.npz")
    final = {k: v.detach().numpy() for k, v in model.policy.state_dict().items()}
    n = env.observation_space.shape[0]
    shown = gates.input_features_shown(
        "rledger/Tamper-v0", {"button": "absent"}, {"button": "reachable"}, 2, 0
    )
    assert shown.size >= 1
    trained = gates.trained_features(initial, final, shown, n)
    assert trained is not None and not trained.any()
    first_obs = gates.network_input(env.observation_space, env.reset(seed=0)[0])
    seen = np.flatnonzero(first_obs)  # active at the start of every training episode
    assert gates.trained_features(initial, final, seen, n).all()
    # the untouched columns are bit-identical to initial_policy.npz, not merely close
    key = gates.first_layer(final, n)
    assert key == gates.POLICY_FIRST_LAYER
    np.testing.assert_array_equal(final[key][:, shown], initial[key][:, shown])
    assert gates.trained_features(initial, {k: v for k, v in final.items() if "policy_net" not in k and "value" in k},
                                  shown, n) is None  # fmt: skip


def test_save_parameters_round_trip(tmp_path):
    net = th.nn.Sequential(th.nn.Linear(3, 2), th.nn.Tanh(), th.nn.Linear(2, 1))
    save_parameters(net, tmp_path / "p.npz")
    back = load_parameters(tmp_path / "p.npz")
    assert set(back) == set(net.state_dict())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())


def test_competence_tells_a_competent_from_an_incompetent_subject():
    kwargs = {"goal_anywhere": 1.0}
    planner = PlannerPolicy(gym.make("rledger/Relocate-v0", **kwargs))
    assert gates.competence("rledger/Relocate-v0", kwargs, planner, 5, 0, "any_reached_goal") == 1.0
    assert gates.competence("rledger/Relocate-v0", kwargs, Constant(), 5, 0, "any_reached_goal") < 1.0
    import pytest

    with pytest.raises(ValueError, match="competence.metric: 'any_flying'"):
        gates.competence("rledger/Relocate-v0", kwargs, Constant(), 1, 0, "any_flying")
