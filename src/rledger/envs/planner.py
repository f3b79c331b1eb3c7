"""Exact planning on a gridworld's MDP: the positive control of the probes.

``plan(env, objective="reward" | "performance", horizon=H)`` solves the finite-horizon problem by
backward induction (undiscounted, as the episodes are scored); ``horizon=None`` uses the env's
registered episode length. Ties between actions are broken toward the lowest action index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from rledger.envs.base import MDP, GridEnv


@dataclass
class Plan:
    """``policy[t, s]``: the optimal action at time ``t`` in state ``s``; ``values[t, s]``: the optimal
    objective-to-go; ``q[t, s, a]`` the action values; ``value``: the expected optimum from the
    initial distribution."""

    policy: np.ndarray
    values: np.ndarray
    q: np.ndarray
    value: float
    objective: str
    mdp: MDP

    def act(self, t: int, state_id: int) -> int:
        return int(self.policy[t, state_id])


def _arrays(mdp: MDP, objective: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Transitions as dense arrays: next state, probability, payoff, done; shape (S, A, K)."""
    k = max(len(outs) for row in mdp.P for outs in row)
    s_n, a_n = mdp.n_states, mdp.n_actions
    nxt = np.zeros((s_n, a_n, k), dtype=np.int64)
    prob = np.zeros((s_n, a_n, k))
    pay = np.zeros((s_n, a_n, k))
    done = np.zeros((s_n, a_n, k), dtype=bool)
    col = 2 if objective == "reward" else 3
    for s, row in enumerate(mdp.P):
        for a, outs in enumerate(row):
            for j, out in enumerate(outs):
                prob[s, a, j], nxt[s, a, j], pay[s, a, j], done[s, a, j] = out[0], out[1], out[col], out[4]
    return nxt, prob, pay, done


def plan(env: gym.Env, objective: str = "reward", horizon: int | None = None) -> Plan:
    """The optimal finite-horizon policy for ``objective`` (env reward, or hidden performance)."""
    if objective not in ("reward", "performance"):
        raise ValueError(f"objective: must be 'reward' or 'performance', got {objective!r}")
    base = env.unwrapped
    if not isinstance(base, GridEnv):
        raise TypeError(f"plan: {type(base).__name__} is not an rledger gridworld (no exact mdp())")
    horizon = _horizon(env, horizon)
    mdp = base.mdp()
    nxt, prob, pay, done = _arrays(mdp, objective)
    s_n, a_n = mdp.n_states, mdp.n_actions
    values = np.zeros((horizon + 1, s_n))
    policy = np.zeros((horizon, s_n), dtype=np.int64)
    q_all = np.zeros((horizon, s_n, a_n))
    for t in range(horizon - 1, -1, -1):
        cont = np.where(done, 0.0, values[t + 1][nxt])
        q = (prob * (pay + cont)).sum(-1)
        q_all[t] = q
        policy[t] = q.argmax(1)
        values[t] = q.max(1)
    value = float(sum(p * values[0, s] for p, s in mdp.initial))
    return Plan(policy, values[:-1], q_all, value, objective, mdp)


def rollout(env: gym.Env, p: Plan, seed: int | None = None) -> tuple[float, float, list[int]]:
    """Run the plan in ``env`` for one episode: (return, hidden performance, actions taken)."""
    obs, info = env.reset(seed=seed)
    total, hidden, actions = 0.0, 0.0, []
    t = 0
    while True:
        a = p.act(t, info["state_id"])
        obs, r, term, trunc, info = env.step(a)
        total += r
        hidden += info["hidden_reward"]
        actions.append(a)
        t += 1
        if term or trunc or t >= p.policy.shape[0]:
            return total, hidden, actions


def hit_probability(
    env: gym.Env,
    predicate: Callable[[Any], bool],
    horizon: int | None = None,
    policy: np.ndarray | None = None,
) -> float:
    """Exact probability that an episode enters a state satisfying ``predicate`` (a function of the
    env's state object) within ``horizon`` steps, under a stochastic ``policy[s, a]`` (default:
    uniformly random actions). The negative control's figure for an option nobody seeks."""
    base = env.unwrapped
    if not isinstance(base, GridEnv):
        raise TypeError(f"hit_probability: {type(base).__name__} is not an rledger gridworld")
    horizon = _horizon(env, horizon)
    mdp = base.mdp()
    nxt, prob, _, done = _arrays(mdp, "reward")
    s_n, a_n = mdp.n_states, mdp.n_actions
    pi = np.full((s_n, a_n), 1.0 / a_n) if policy is None else np.asarray(policy, dtype=np.float64)
    hit = np.array([bool(predicate(s)) for s in mdp.states])
    mass = np.zeros(s_n)
    for p, s in mdp.initial:
        mass[s] += p
    total = float(mass[hit].sum())
    mass[hit] = 0.0  # counted once: the episode's first entry
    for _ in range(horizon):
        flow = mass[:, None, None] * pi[:, :, None] * prob  # (S, A, K)
        new = np.zeros(s_n)
        np.add.at(new, nxt.reshape(-1), flow.reshape(-1))
        entered = new.copy()
        # mass that ended its episode on this step still counts if it ended in a hit state
        ended = np.zeros(s_n)
        np.add.at(ended, nxt.reshape(-1), (flow * done).reshape(-1))
        total += float(entered[hit].sum())
        mass = new - ended
        mass[hit] = 0.0
    return total


def _horizon(env: gym.Env, horizon: int | None) -> int:
    if horizon is None:
        spec = env.spec if env.spec is not None else env.unwrapped.spec
        horizon = spec.max_episode_steps if spec is not None else None
        if horizon is None:
            raise ValueError("horizon: the env has no registered episode length; pass horizon=")
    if horizon < 1:
        raise ValueError(f"horizon: must be >= 1, got {horizon}")
    return horizon
