"""Small real gymnasium wrappers used to exercise policy kinds (image-like and dict observations)."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor


class GridObs(gym.ObservationWrapper):
    """CartPole's 4 numbers tiled into a (1, 4, 4) image, so a conv layer has something to read."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Box(-np.inf, np.inf, (1, 4, 4), np.float32)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return np.tile(obs.astype(np.float32), (4, 1)).reshape(1, 4, 4)


class DictObs(gym.ObservationWrapper):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Dict(
            {
                "a": spaces.Box(-np.inf, np.inf, (2,), np.float32),
                "b": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            }
        )

    def observation(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"a": obs[:2].astype(np.float32), "b": obs[2:].astype(np.float32)}


class ConvExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.net = th.nn.Sequential(
            th.nn.Conv2d(1, 4, kernel_size=2),
            th.nn.ReLU(),
            th.nn.Flatten(),
            th.nn.Linear(36, features_dim),
            th.nn.Tanh(),
        )

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return self.net(obs)


class SharedLinearExtractor(BaseFeaturesExtractor):
    """A trainable Linear shared by actor and critic (share_features_extractor=True)."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.lin = th.nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return th.tanh(self.lin(obs.flatten(1)))


class HoldsALock(gym.Wrapper):
    """A wrapper that holds a thread lock: neither pickle nor cloudpickle can serialize it."""

    def __init__(self, env: gym.Env):
        import threading

        super().__init__(env)
        self.lock = threading.Lock()


class FailsOnSeed(gym.Wrapper):
    """Raises a RuntimeError from ``step`` once an env first reset with ``seed`` has taken more than
    ``after`` steps, while the environment variable ``RLEDGER_TEST_FAIL`` is set: a run that fails
    mid-training inside a pool worker (or a Ray task), and resumes once the variable is unset."""

    def __init__(self, env: gym.Env, seed: int, after: int):
        super().__init__(env)
        self.fail_seed, self.after, self.armed, self.steps = seed, after, False, 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.armed = seed == self.fail_seed
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.armed and self.steps > self.after and os.environ.get("RLEDGER_TEST_FAIL"):
            raise RuntimeError(f"planted failure after {self.after} steps")
        return self.env.step(action)


class ImageObs(gym.ObservationWrapper):
    """CartPole's 4 numbers drawn into a (1, 36, 36) uint8 image (each number a 9-row band of
    brightness): the smallest image SB3's NatureCNN (``CnnPolicy``) takes."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, (1, 36, 36), np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        level = np.clip((np.tanh(obs) + 1) * 127.5, 0, 255).astype(np.uint8)
        return np.repeat(level, 9)[None, :, None].repeat(36, axis=2)


class ImpalaExtractor(BaseFeaturesExtractor):
    """A small IMPALA-style residual CNN (Espeholt et al. 2018): per stage a 3x3 conv, a 3x3 max-pool
    with stride 2 and one residual block (ReLU, conv, ReLU, conv, add), then ReLU, Flatten, Linear."""

    def __init__(
        self, observation_space: spaces.Box, features_dim: int = 16, depths: tuple[int, ...] = (4, 8)
    ):
        super().__init__(observation_space, features_dim)
        layers: list[th.nn.Module] = []
        c = observation_space.shape[0]
        for depth in depths:
            layers += [th.nn.Conv2d(c, depth, 3, padding=1), th.nn.MaxPool2d(3, stride=2, padding=1)]
            layers.append(_Residual(depth))
            c = depth
        self.stages = th.nn.Sequential(*layers)
        with th.no_grad():
            n = self.stages(th.zeros(1, *observation_space.shape)).numel()
        self.head = th.nn.Linear(n, features_dim)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return th.relu(self.head(th.relu(self.stages(obs)).flatten(1)))


class _Residual(th.nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv0 = th.nn.Conv2d(c, c, 3, padding=1)
        self.conv1 = th.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return x + self.conv1(th.relu(self.conv0(th.relu(x))))


class GroupedConvExtractor(BaseFeaturesExtractor):
    """A grouped convolution and a LayerNorm with its own parameters: the generic torch.func path."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        self.net = th.nn.Sequential(
            th.nn.Conv2d(1, 4, kernel_size=2),
            th.nn.Conv2d(4, 4, kernel_size=1, groups=2),
            th.nn.Flatten(),
            th.nn.LayerNorm(36),
            th.nn.Linear(36, features_dim),
            th.nn.Tanh(),
        )

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return self.net(obs)
