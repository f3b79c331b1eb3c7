"""Step-level recording during rollout collection: transitions' env-side columns and episodes.

:class:`StepRecorder` wraps the callback that SB3's ``collect_rollouts`` drives. SB3 hands the
callback the loop's locals right after ``env.step``; the recorder copies what it needs (the env's raw
rewards, dones, infos) into preallocated arrays before SB3 adds the timeout bootstrap to the rewards,
then delegates to the user's callback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


def obs_hash(obs: Any) -> int:
    """64-bit identity of one observation: the first 8 bytes of BLAKE2b of its bytes, as int64."""
    if isinstance(obs, dict):
        data = b"".join(np.ascontiguousarray(obs[k]).tobytes() for k in sorted(obs))
    else:
        data = np.ascontiguousarray(obs).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _row(obs: Any, i: int) -> Any:
    if isinstance(obs, dict):
        return {k: v[i] for k, v in obs.items()}
    return obs[i]


@dataclass
class EpisodeTracker:
    """Per-env running episode counters and sums; emits a row for every finished episode."""

    n_envs: int
    info_keys: tuple[str, ...]
    episode: np.ndarray = field(init=False)
    ret: np.ndarray = field(init=False)
    length: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)
    finished: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.episode = np.zeros(self.n_envs, dtype=np.int64)
        self.ret = np.zeros(self.n_envs, dtype=np.float64)
        self.length = np.zeros(self.n_envs, dtype=np.int32)
        self.sums = np.zeros((self.n_envs, len(self.info_keys)), dtype=np.float64)

    def abandon_running(self) -> None:
        """The env was reset outside an episode end (a new learn()): running episodes are dropped."""
        started = self.length > 0
        self.episode[started] += 1
        self.ret[:] = 0
        self.length[:] = 0
        self.sums[:] = 0

    def step(
        self,
        rollout: int,
        rewards: np.ndarray,
        dones: np.ndarray,
        terminated: np.ndarray,
        metrics: np.ndarray,
    ) -> None:
        self.ret += rewards
        self.length += 1
        self.sums += metrics
        for i in np.flatnonzero(dones):
            row = {
                "rollout": rollout,
                "env": i,
                "episode": int(self.episode[i]),
                "return": float(self.ret[i]),
                "length": int(self.length[i]),
                "terminated": bool(terminated[i]),
            }
            row.update({k: float(self.sums[i, j]) for j, k in enumerate(self.info_keys)})
            self.finished.append(row)
            self.episode[i] += 1
            self.ret[i] = 0
            self.length[i] = 0
            self.sums[i] = 0

    def pop(self) -> list[dict[str, Any]]:
        rows, self.finished = self.finished, []
        return rows


class RolloutArrays:
    """Env-side columns of one rollout, shape ``(n_steps, n_envs)``."""

    def __init__(self, n_steps: int, n_envs: int, n_info: int):
        self.episode = np.zeros((n_steps, n_envs), dtype=np.int64)
        self.state_id = np.zeros((n_steps, n_envs), dtype=np.int64)
        self.reward = np.zeros((n_steps, n_envs), dtype=np.float32)
        self.terminated = np.zeros((n_steps, n_envs), dtype=bool)
        self.truncated = np.zeros((n_steps, n_envs), dtype=bool)
        self.info = np.zeros((n_steps, n_envs, n_info), dtype=np.float64)
        self.filled = 0


class StepRecorder(BaseCallback):
    """Wraps a callback; records every env step of the rollout being collected."""

    def __init__(self, inner: BaseCallback, model: Any, arrays: RolloutArrays, rollout: int):
        super().__init__()
        self.inner = inner
        self.model_ref = model
        self.arrays = arrays
        self.rollout = rollout

    def update_locals(self, locals_: dict[str, Any]) -> None:
        self._locals = locals_
        self.inner.update_locals(locals_)

    def on_rollout_start(self) -> None:
        self.inner.on_rollout_start()

    def on_rollout_end(self) -> None:
        self.inner.on_rollout_end()

    def on_step(self) -> bool:
        self._record(self._locals)
        return self.inner.on_step()

    def _on_step(self) -> bool:  # pragma: no cover - on_step is overridden
        return True

    def _record(self, loc: dict[str, Any]) -> None:
        m = self.model_ref
        t = int(loc["n_steps"])
        a = self.arrays
        rewards = np.asarray(loc["rewards"], dtype=np.float32).copy()
        dones = np.asarray(loc["dones"], dtype=bool)
        infos: list[dict[str, Any]] = loc["infos"]
        truncated = np.array(
            [bool(d and info.get("TimeLimit.truncated", False)) for d, info in zip(dones, infos, strict=True)]
        )
        terminated = dones & ~truncated
        metrics = np.zeros((len(infos), len(m.info_keys)), dtype=np.float64)
        for j, key in enumerate(m.info_keys):
            for i, info in enumerate(infos):
                if key not in info:
                    raise KeyError(
                        f"info_keys: the env's info at step {t} of env {i} has no key {key!r} "
                        f"(keys: {sorted(info)}); name only scalar keys present on every step"
                    )
                metrics[i, j] = float(info[key])
        tracker: EpisodeTracker = m._episodes
        a.episode[t] = tracker.episode
        a.state_id[t] = m._state_ids
        a.reward[t] = rewards
        a.terminated[t] = terminated
        a.truncated[t] = truncated
        a.info[t] = metrics
        a.filled = t + 1
        tracker.step(self.rollout, rewards.astype(np.float64), dones, terminated, metrics)
        m._state_ids = next_state_ids(loc["env"], loc["new_obs"], infos, dones)


def next_state_ids(env: Any, new_obs: Any, infos: list[dict[str, Any]], dones: np.ndarray) -> np.ndarray:
    """State ids of the observations the policy sees next (after any automatic reset)."""
    reset_infos = getattr(env, "reset_infos", None)
    out = np.zeros(len(infos), dtype=np.int64)
    for i, info in enumerate(infos):
        src = reset_infos[i] if (dones[i] and reset_infos is not None) else info
        out[i] = int(src["state_id"]) if "state_id" in src else obs_hash(_row(new_obs, i))
    return out


def initial_state_ids(env: Any, obs: Any) -> np.ndarray:
    reset_infos = getattr(env, "reset_infos", None) or [{} for _ in range(env.num_envs)]
    out = np.zeros(env.num_envs, dtype=np.int64)
    for i in range(env.num_envs):
        info = reset_infos[i] if i < len(reset_infos) else {}
        out[i] = int(info["state_id"]) if "state_id" in info else obs_hash(_row(obs, i))
    return out
