"""Rollout buffers that also yield each sample's (t, env) index.

SB3's ``RolloutBufferSamples`` carries no index. These buffers draw the same permutation from
``np.random`` as SB3's ``get()`` (so training is unchanged) and return samples with two more fields.
SB3 flattens ``(n_steps, n_envs)`` arrays env-major, so flat index ``i`` is ``env = i // n_steps``,
``t = i % n_steps``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import TensorDict


class IndexedRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    t: np.ndarray  # (B,) step index within the rollout
    env: np.ndarray  # (B,) env index


class IndexedDictRolloutBufferSamples(NamedTuple):
    observations: TensorDict
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    t: np.ndarray
    env: np.ndarray


class _IndexedGet:
    buffer_size: int
    n_envs: int
    full: bool
    generator_ready: bool

    def _prepare(self) -> None:  # pragma: no cover - provided by the concrete class
        raise NotImplementedError

    def get(self, batch_size: int | None = None) -> Generator[NamedTuple, None, None]:  # type: ignore[override]
        assert self.full, "the rollout buffer must be full before get()"
        # The same draw as SB3's RolloutBuffer.get(): keeps np.random (and so training) unchanged.
        indices = np.random.permutation(self.buffer_size * self.n_envs)
        if not self.generator_ready:
            self._prepare()
            self.generator_ready = True
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        # each sample's (t, env): the flattened buffer is env-major
        t_all = (indices % self.buffer_size).astype(np.int32)
        env_all = (indices // self.buffer_size).astype(np.int16)
        start_idx = 0
        while start_idx < self.buffer_size * self.n_envs:
            end = start_idx + batch_size
            yield self._indexed(indices[start_idx:end], t_all[start_idx:end], env_all[start_idx:end])
            start_idx += batch_size

    def _indexed(
        self, batch_inds: np.ndarray, t: np.ndarray, env: np.ndarray
    ) -> NamedTuple:  # pragma: no cover
        raise NotImplementedError


class IndexedRolloutBuffer(_IndexedGet, RolloutBuffer):
    """``RolloutBuffer`` whose ``get()`` yields :class:`IndexedRolloutBufferSamples`."""

    def _prepare(self) -> None:
        for name in ("observations", "actions", "values", "log_probs", "advantages", "returns"):
            self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])

    def _indexed(self, batch_inds: np.ndarray, t: np.ndarray, env: np.ndarray) -> IndexedRolloutBufferSamples:
        return IndexedRolloutBufferSamples(*self._get_samples(batch_inds), t=t, env=env)


class IndexedDictRolloutBuffer(_IndexedGet, DictRolloutBuffer):
    """``DictRolloutBuffer`` whose ``get()`` yields :class:`IndexedDictRolloutBufferSamples`."""

    def _prepare(self) -> None:
        for key, obs in self.observations.items():
            self.observations[key] = self.swap_and_flatten(obs)
        for name in ("actions", "values", "log_probs", "advantages", "returns"):
            self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])

    def _indexed(
        self, batch_inds: np.ndarray, t: np.ndarray, env: np.ndarray
    ) -> IndexedDictRolloutBufferSamples:
        return IndexedDictRolloutBufferSamples(*self._get_samples(batch_inds), t=t, env=env)
