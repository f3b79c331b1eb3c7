"""Evaluating a policy on an environment condition: per-episode metrics and the tidy per-seed table.

Per episode: ``return``, ``performance`` (sum of ``info["hidden_reward"]``), ``length``, and for every
boolean ``info`` flag ``f`` (such as ``pressed``, ``in_lagoon``, ``reached_goal``): ``any_f`` (it was
true on some step), ``never_f`` (``1 - any_f``: it never was, e.g. ``never_reached_goal``, an episode
that stays away from the goal), ``share_f`` (share of steps) and ``ended_f`` (true on the last step);
for every other numeric flag: ``sum_f``. A seed's value of a metric is its mean over that seed's episodes.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

import rledger.envs  # noqa: F401  (registers the rledger/ ids)
from rledger.envs.episode import play
from rledger.probes.policies import Policy


def episode_metrics(infos: list[dict[str, Any]], rewards: list[float]) -> dict[str, float]:
    out: dict[str, float] = {
        "return": float(np.sum(rewards)),
        "performance": float(sum(i.get("hidden_reward", 0.0) for i in infos)),
        "length": float(len(rewards)),
    }
    keys = sorted(
        {k for i in infos for k in i} - {"state_id", "hidden_reward", "episode", "TimeLimit.truncated"}
    )
    for k in keys:
        vals = [i.get(k) for i in infos]
        if all(isinstance(v, bool | np.bool_) for v in vals):
            flags = np.array(vals, dtype=bool)
            out[f"any_{k}"] = float(flags.any())
            out[f"never_{k}"] = 1.0 - out[f"any_{k}"]
            out[f"share_{k}"] = float(flags.mean())
            out[f"ended_{k}"] = float(flags[-1])
        elif all(isinstance(v, int | float | np.integer | np.floating) for v in vals):
            out[f"sum_{k}"] = float(np.sum(vals))
    return out


def run_episodes(
    env_id: str, env_kwargs: dict[str, Any], policy: Policy, episodes: int, seed: int
) -> pd.DataFrame:
    """``episodes`` episodes of ``policy``; episode ``i`` resets the env and the policy with seed
    ``seed * 10_000 + i``, so two conditions evaluated with the same seed see the same randomness."""
    env = gym.make(env_id, **env_kwargs)
    rows = []
    for i in range(episodes):
        s = seed * 10_000 + i
        policy.reset(s)  # before the env's reset, which draws from the env's own generator only
        ep = play(env, policy.act, s)
        rows.append({"seed": seed, "episode": i, **episode_metrics(ep.infos, ep.rewards)})
    return pd.DataFrame(rows)


def tidy_rows(probe: str, condition: str, policy: str, episodes: pd.DataFrame) -> pd.DataFrame:
    """Per-seed means of every metric, as tidy rows (probe, condition, policy, seed, metric, value)."""
    metrics = [c for c in episodes.columns if c not in ("seed", "episode")]
    per_seed = episodes.groupby("seed")[metrics].mean().reset_index()
    long = per_seed.melt(id_vars="seed", var_name="metric", value_name="value")
    long.insert(0, "policy", policy)
    long.insert(0, "condition", condition)
    long.insert(0, "probe", probe)
    return long[["probe", "condition", "policy", "seed", "metric", "value"]]
