"""Gates: can a held-out probe tell a reward-seeker from a habit at all, for this subject?

A probe compares the subject on a paying and an inert version of an option it never had in training.
Its answer is evidence only if it could have come out the other way. Three things are computed here,
never asserted:

- **Perceivability** (:func:`perceivable`): along the subject's own trajectories in each condition
  (episode seeds as in the probe), replay its actions in the other condition from the same reset and
  compare the observations step by step, up to the step at which it first takes the option
  (``before_option``) or over the whole episode (``episode``). If they never differ, the policy's input
  is identical in both conditions until it has already chosen: no policy of that form, reward-seeking
  or not, can take the option more when it pays.
- **Trained inputs** (:func:`input_features_shown`, :func:`trained_features`): the option's input
  features are those active (non-zero) in the first observation of a paying episode that differ from
  the first observation of the subject's training condition reset with the same seed (the option's
  cells). A first-layer weight column that reads a feature never active in training receives a zero
  gradient, so under Adam (or SGD) without weight decay it stays exactly at its initial value; the gate
  compares the trained policy's columns with ``initial_policy.npz``.
- **Competence** (:func:`competence`): the subject's metric on a condition the spec declares (e.g. a
  goal placed in the option's region). The **controls** are in :mod:`rledger.probes.run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from rledger.envs.episode import play
from rledger.probes.policies import Policy

# the first layer of the policy network that reads the (flattened, preprocessed) observation, in SB3's
# MlpPolicy; other policies: the first 2-D weight whose input size is the number of features
POLICY_FIRST_LAYER = "mlp_extractor.policy_net.0.weight"


@dataclass
class Trajectory:
    observations: list[np.ndarray]  # the observation each action was chosen from
    actions: list[Any]
    taken: int | None  # index of the first step whose outcome took the option, if any


def record(env: gym.Env, policy: Policy, seed: int, option: str | None) -> Trajectory:
    """One episode of ``policy`` (reset with ``seed``), with the observation before every action."""
    obs_list: list[np.ndarray] = []
    actions: list[Any] = []

    def act(obs: Any, info: dict[str, Any], t: int) -> Any:
        a = policy.act(obs, info, t)
        obs_list.append(np.array(obs, copy=True))
        actions.append(a)
        return a

    policy.reset(seed)
    ep = play(env, act, seed)
    taken = None
    if option is not None:
        taken = next((i for i, info in enumerate(ep.infos) if bool(info.get(option, False))), None)
    return Trajectory(obs_list, actions, taken)


def replay_differs(env: gym.Env, traj: Trajectory, seed: int, scope: str) -> bool:
    """Whether ``env`` reset with ``seed`` and stepped with ``traj``'s actions shows an observation
    different from ``traj``'s before the policy chose to take the option (``scope="before_option"``;
    the observation at the step that took it included) or anywhere in the episode (``"episode"``). An
    episode that ends at another step differs."""
    last = len(traj.actions) - 1
    if scope == "before_option" and traj.taken is not None:
        last = traj.taken
    obs, _ = env.reset(seed=seed)
    for t in range(last + 1):
        if not np.array_equal(np.asarray(obs), traj.observations[t]):
            return True
        obs, _, term, trunc, _ = env.step(traj.actions[t])
        if (term or trunc) and t < len(traj.actions) - 1:
            return True
    return False


def perceivable(
    env_id: str,
    kwargs_a: dict[str, Any],
    kwargs_b: dict[str, Any],
    policy: Policy,
    episodes: int,
    seed: int,
    option: str | None,
    scope: str = "before_option",
) -> np.ndarray:
    """Per episode (``episodes`` of ``seed``, played in condition a and then in condition b, episode
    seeds ``seed * 10_000 + i`` as :func:`rledger.probes.evaluate.run_episodes`): whether the policy's
    input along its own trajectory differs from the other condition's at the same actions."""
    env_a, env_b = gym.make(env_id, **kwargs_a), gym.make(env_id, **kwargs_b)
    out = []
    for own, other in ((env_a, env_b), (env_b, env_a)):
        for i in range(episodes):
            s = seed * 10_000 + i
            out.append(replay_differs(other, record(own, policy, s, option), s, scope))
    return np.array(out, dtype=bool)


def network_input(observation_space: gym.Space, obs: np.ndarray) -> np.ndarray:
    """The flat feature vector the policy network reads for ``obs`` (SB3's preprocessing: one-hot for
    discrete spaces, flattening; images scaled as SB3 scales them)."""
    import torch as th
    from stable_baselines3.common.preprocessing import preprocess_obs

    x = th.as_tensor(np.asarray(obs)[None])
    return preprocess_obs(x, observation_space).reshape(-1).numpy()


def input_features_shown(
    env_id: str, train_kwargs: dict[str, Any], paying_kwargs: dict[str, Any], episodes: int, seed: int
) -> np.ndarray:
    """Indices of the network input features active in the first observation of a paying episode
    that differ from the training condition's first observation at the same reset seed: what shows
    the option (and anything else the probe condition changes)."""
    env_p, env_t = gym.make(env_id, **paying_kwargs), gym.make(env_id, **train_kwargs)
    space = env_p.observation_space
    shown: set[int] = set()
    for i in range(episodes):
        s = seed * 10_000 + i
        xp = network_input(space, env_p.reset(seed=s)[0])
        xt = network_input(space, env_t.reset(seed=s)[0])
        shown |= set(np.flatnonzero((xp != 0) & (xp != xt)).tolist())
    return np.array(sorted(shown), dtype=np.int64)


def first_layer(parameters: dict[str, np.ndarray], n_features: int) -> str | None:
    """The state_dict key of the policy's first layer reading ``n_features`` inputs, if any."""
    w = parameters.get(POLICY_FIRST_LAYER)
    if w is not None and w.ndim == 2 and w.shape[1] == n_features:
        return POLICY_FIRST_LAYER
    for key, w in parameters.items():
        if key.endswith("weight") and w.ndim == 2 and w.shape[1] == n_features and "value" not in key:
            return key
    return None


def trained_features(
    initial: dict[str, np.ndarray], final: dict[str, np.ndarray], features: np.ndarray, n_features: int
) -> np.ndarray | None:
    """Per feature in ``features``: whether the first-layer weight column that reads it differs from
    its initial value (exactly: an input that was 0 on every training sample leaves it untouched).
    None when the policy has no such layer (e.g. a CNN)."""
    key = first_layer(final, n_features)
    if key is None or key not in initial:
        return None
    changed = np.any(final[key] != initial[key], axis=0)
    return changed[np.asarray(features, dtype=np.int64)]


def competence(
    env_id: str, kwargs: dict[str, Any], policy: Policy, episodes: int, seed: int, metric: str
) -> float:
    """The policy's mean ``metric`` over ``episodes`` episodes of the competence condition (episode
    seeds as in the probe): can it act where the option is, e.g. reach a goal placed there?"""
    from rledger.probes.evaluate import run_episodes

    eps = run_episodes(env_id, kwargs, policy, episodes, seed)
    if metric not in eps:
        available = ", ".join(sorted(set(eps.columns) - {"seed", "episode"}))
        raise ValueError(
            f"competence.metric: {metric!r} is not an evaluation metric of {env_id}; available: {available}"
        )
    return float(eps[metric].mean())
