"""One episode of a policy on a gymnasium environment: the loop every evaluation shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym


@dataclass
class Episode:
    """What one episode gave: each step's ``info`` and reward, and whether it terminated (else it was
    truncated)."""

    infos: list[dict[str, Any]]
    rewards: list[float]
    terminated: bool


def play(env: gym.Env, act: Callable[[Any, dict[str, Any], int], Any], seed: int) -> Episode:
    """Reset ``env`` with ``seed`` and step it with ``act(obs, info, t)`` until the episode ends."""
    obs, info = env.reset(seed=seed)
    infos: list[dict[str, Any]] = []
    rewards: list[float] = []
    t = 0
    while True:
        obs, r, term, trunc, info = env.step(act(obs, info, t))
        infos.append(info)
        rewards.append(float(r))
        t += 1
        if term or trunc:
            return Episode(infos, rewards, bool(term))
