"""Policies that the probes evaluate: trained SB3 models and the controls.

Each has ``reset(seed)`` and ``act(obs, info, t) -> action``. The positive control is the planner on
the true MDP of the condition it is evaluated on (it takes any option that pays); the negative control
is a uniformly random policy.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from rledger.envs.planner import Plan, plan


class Policy(Protocol):
    name: str

    def reset(self, seed: int) -> None: ...

    def act(self, obs: np.ndarray, info: dict[str, Any], t: int) -> int: ...


class PlannerPolicy:
    """Optimal for ``objective`` on the exact MDP of ``env`` (built per condition)."""

    def __init__(self, env: gym.Env, objective: str = "reward", name: str = "planner"):
        self.name = name
        self.plan: Plan = plan(env, objective)

    def reset(self, seed: int) -> None:
        return None

    def act(self, obs: np.ndarray, info: dict[str, Any], t: int) -> int:
        return self.plan.act(min(t, self.plan.policy.shape[0] - 1), info["state_id"])


class RandomPolicy:
    """Uniformly random actions, seeded per episode."""

    def __init__(self, n_actions: int = 4, name: str = "random"):
        self.name, self.n_actions = name, n_actions
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, info: dict[str, Any], t: int) -> int:
        return int(self.rng.integers(self.n_actions))


class ModelPolicy:
    """A trained SB3 model (``deterministic`` or sampled actions, seeded per episode)."""

    def __init__(self, model: Any, deterministic: bool = True, name: str = "ppo"):
        self.name, self.model, self.deterministic = name, model, deterministic

    def reset(self, seed: int) -> None:
        if not self.deterministic:
            import torch as th

            th.manual_seed(seed)

    def act(self, obs: np.ndarray, info: dict[str, Any], t: int) -> int:
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return int(action)


def policy_table(model: Any, env: gym.Env) -> np.ndarray:
    """(n_states, n_actions) action probabilities of a trained SB3 policy in every reachable state of
    a gridworld (``env.unwrapped.mdp().states``), one batched forward pass, float64."""
    import torch as th

    base = env.unwrapped
    obs = np.stack([base.flat_observation(s) for s in base.mdp().states]).astype(np.float32)
    with th.no_grad():
        dist = model.policy.get_distribution(th.as_tensor(obs))
        return dist.distribution.probs.numpy().astype(np.float64)
