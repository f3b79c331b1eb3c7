"""Wrappers that experiments name in their specs."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym


class AffineReward(gym.RewardWrapper):
    """The env's reward mapped to ``scale * r + offset`` (the reward-scale probe's transform); ``info``
    (the hidden performance signal included) is left as the env gives it."""

    def __init__(self, env: gym.Env, scale: float = 1.0, offset: float = 0.0):
        super().__init__(env)
        self.scale, self.offset = float(scale), float(offset)

    def reward(self, reward: SupportsFloat) -> Any:
        return self.scale * reward + self.offset  # type: ignore[operator]
