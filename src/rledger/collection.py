"""Step-level recording during rollout collection: transitions' env-side columns and episodes.

:class:`rledger.recorder.Recorder` hands each env step of ``InstrumentedPPO.collect_rollouts`` to
:class:`RolloutArrays`: on a step where some env is done, the env's raw rewards (before SB3 adds the
timeout bootstrap to them), dones and truncations; the named info keys on every step when there are
any. The rewards of every other step are taken from the rollout buffer when the collection ends
(:meth:`RolloutArrays.fill_rewards`): SB3 stores them unchanged there, cast to float32 as here.
Episodes and observation hashes are computed for the whole rollout at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def obs_hash_rows(obs: Any, n: int) -> np.ndarray:
    """64-bit identity of each of ``n`` observations (rows), as int64.

    The observation's bytes, zero-padded to whole 8-byte words, are folded FNV-1a style word by word
    (``h = (h ^ w) * 0x100000001b3`` from ``0xcbf29ce484222325``), then mixed with the splitmix64
    finalizer. Dict observations hash the concatenated bytes of their keys in sorted order.
    """
    if isinstance(obs, dict):
        raw = np.concatenate([_bytes_rows(obs[k], n) for k in sorted(obs)], axis=1)
    else:
        raw = _bytes_rows(obs, n)
    pad = (-raw.shape[1]) % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((n, pad), dtype=np.uint8)], axis=1)
    words = np.ascontiguousarray(raw).view(np.uint64)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for w in range(words.shape[1]):
            h = (h ^ words[:, w]) * _FNV_PRIME
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h.view(np.int64)


def _bytes_rows(arr: Any, n: int) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(arr).reshape(n, -1))
    return a.view(np.uint8).reshape(n, -1)


class RolloutArrays:
    """Env-side columns of one rollout, shape ``(n_steps, n_envs)``, filled step by step."""

    def __init__(self, n_steps: int, n_envs: int, n_info: int):
        self.reward = np.zeros((n_steps, n_envs), dtype=np.float32)
        self.done = np.zeros((n_steps, n_envs), dtype=bool)
        self.truncated = np.zeros((n_steps, n_envs), dtype=bool)
        self.info = np.zeros((n_steps, n_envs, n_info), dtype=np.float64)
        self.state_id: np.ndarray | None = None  # filled only when the env provides info["state_id"]
        self.filled = 0
        self.last_rewards: Any = None  # the newest step's rewards as the env gave them

    def record_done(
        self, t: int, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]
    ) -> None:
        """Step ``t``, where some env is done: its rewards (a copy: SB3 adds the timeout bootstrap to
        them in place afterwards), dones and truncations."""
        self.reward[t] = rewards
        self.done[t] = dones
        for i in np.flatnonzero(dones):
            self.truncated[t, i] = bool(infos[i].get("TimeLimit.truncated", False))

    def record_info(self, t: int, infos: list[dict[str, Any]], info_keys: tuple[str, ...]) -> None:
        """The named scalar info keys of step ``t``."""
        for j, key in enumerate(info_keys):
            try:
                self.info[t, :, j] = [info[key] for info in infos]
            except KeyError:
                missing = next(i for i, info in enumerate(infos) if key not in info)
                raise KeyError(
                    f"info_keys: the env's info at step {t} of env {missing} has no key {key!r} "
                    f"(keys: {sorted(infos[missing])}); name only scalar keys present on every step"
                ) from None

    def fill_rewards(self, buffer_rewards: np.ndarray, stored: int) -> None:
        """Rewards of the steps where no env was done, from the rollout buffer (``stored`` steps are
        in it; a step past them, where a callback stopped the collection, from the env's own)."""
        n = self.filled
        keep = self.done[:n].any(axis=1)  # rows the recorder copied itself
        rows = ~keep[:stored]
        self.reward[:stored][rows] = buffer_rewards[:stored][rows]
        if n > stored and not keep[n - 1]:
            self.reward[n - 1] = self.last_rewards


class EpisodeTracker:
    """Per-env episode counters and running sums carried across rollouts."""

    def __init__(self, n_envs: int, info_keys: tuple[str, ...]):
        self.info_keys = info_keys
        self.episode = np.zeros(n_envs, dtype=np.int64)
        self.ret = np.zeros(n_envs, dtype=np.float64)
        self.length = np.zeros(n_envs, dtype=np.int64)
        self.sums = np.zeros((n_envs, len(info_keys)), dtype=np.float64)

    def abandon_running(self) -> None:
        """The env was reset outside an episode end (a new learn()): running episodes are dropped."""
        self.episode[self.length > 0] += 1
        self.ret[:] = 0
        self.length[:] = 0
        self.sums[:] = 0

    def consume(self, rollout: int, a: RolloutArrays) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Episode index of every step of the rollout, ``(n_steps, n_envs)``, and the finished episodes."""
        n_steps, n_envs = a.reward.shape
        done = a.done[: a.filled]
        # episode of step t: the counter at the rollout's start plus the episodes ended before t
        ended_before = np.cumsum(done, axis=0) - done
        episode = np.zeros((n_steps, n_envs), dtype=np.int64)
        episode[: a.filled] = self.episode[None, :] + ended_before
        rows: list[dict[str, Any]] = []
        reward = a.reward[: a.filled].astype(np.float64)
        info = a.info[: a.filled]
        for e in range(n_envs):
            start = 0
            for t in np.flatnonzero(done[:, e]):
                ret = self.ret[e] + reward[start : t + 1, e].sum()
                length = self.length[e] + (t + 1 - start)
                sums = self.sums[e] + info[start : t + 1, e].sum(axis=0)
                row = {
                    "rollout": rollout,
                    "env": e,
                    "episode": int(self.episode[e]),
                    "return": float(ret),
                    "length": int(length),
                    "terminated": not bool(a.truncated[t, e]),
                }
                row.update({k: float(sums[j]) for j, k in enumerate(self.info_keys)})
                rows.append(row)
                self.episode[e] += 1
                self.ret[e] = self.length[e] = 0
                self.sums[e] = 0
                start = t + 1
            self.ret[e] += reward[start:, e].sum()
            self.length[e] += a.filled - start
            self.sums[e] += info[start:, e].sum(axis=0)
        rows.sort(key=lambda r: (r["env"], r["episode"]))
        return episode, rows


def next_state_ids(env: Any, infos: list[dict[str, Any]], dones: np.ndarray) -> np.ndarray:
    """``info["state_id"]`` of the observations the policy sees next (after any automatic reset)."""
    reset_infos = getattr(env, "reset_infos", None)
    out = np.zeros(len(infos), dtype=np.int64)
    for i, info in enumerate(infos):
        src = reset_infos[i] if (dones[i] and reset_infos is not None) else info
        if "state_id" not in src:
            raise KeyError(
                f"env {i} gave info['state_id'] on some steps but not on this one; provide it on every "
                "step and in reset() infos, or never"
            )
        out[i] = int(src["state_id"])
    return out


def initial_state_ids(env: Any) -> np.ndarray | None:
    """``info["state_id"]`` of each env's first observation, or None when the env gives none."""
    reset_infos = getattr(env, "reset_infos", None)
    if not reset_infos or not all("state_id" in info for info in reset_infos):
        return None
    return np.array([int(info["state_id"]) for info in reset_infos], dtype=np.int64)
