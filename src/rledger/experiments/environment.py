"""A run's environments, made from its config in one place: the runner's training VecEnv, the
evaluation episodes, the model rebuilt for analysis and the preflight checks all come through here.

A config's ``env`` section holds ``id`` and ``kwargs`` and, only when the spec sets them:

- ``import``: modules imported first (they register their ids, e.g. ``minigrid``);
- ``wrappers``: ``[{name, kwargs}]``, gymnasium wrappers applied in order to each env (after SB3's
  ``Monitor``, as ``make_vec_env``'s ``wrapper_class`` applies them): a class name from
  :data:`WRAPPER_MODULES` or a dotted path (``package.module.Class`` or ``package.module:Class``);
- ``vec_normalize``: SB3's ``VecNormalize`` keyword arguments (its ``gamma`` defaults to PPO's). The
  ledger's ``reward`` and ``return`` are then the normalized rewards PPO trains on; the env's own
  reward is recorded per step as the info key ``raw_reward`` (:class:`RawReward`, applied last before
  the normalization), summed per episode in the episodes table. The statistics are saved with the
  run (``vecnormalize.npz``, no pickle) and evaluation normalizes observations with them;
- ``frame_stack``: SB3's ``VecFrameStack`` with that many frames (after ``VecNormalize``, as the
  rl-baselines3-zoo does it).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

WRAPPER_MODULES = ("gymnasium.wrappers", "rledger.envs.wrappers", "stable_baselines3.common.atari_wrappers")
FEATURE_EXTRACTOR_MODULES = ("stable_baselines3.common.torch_layers",)
RAW_REWARD = "raw_reward"
VEC_NORMALIZE = "vecnormalize.npz"


class EnvConfigError(ValueError):
    """A config field that cannot be turned into an env: ``field`` names it (``env.import``,
    ``env.wrappers[1]``, ...), the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def import_modules(modules: Sequence[str], field: str = "env.import") -> None:
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the spec's to fix
            raise EnvConfigError(
                f"{field}[{i}]",
                f"module {name!r} cannot be imported ({first_line(exc)}); install it or fix the name",
            ) from None


def resolve(name: str, field: str, modules: Sequence[str]) -> Any:
    """The object ``name`` names: a dotted path (``package.module.Class``, ``package.module:Class``) or
    a bare name looked up in ``modules`` in order."""
    if not isinstance(name, str) or not name:
        raise EnvConfigError(field, f"must be a class name or a dotted path, got {name!r}")
    if ":" in name or "." in name:
        module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except Exception as exc:  # noqa: BLE001
            raise EnvConfigError(field, f"{name!r} cannot be imported ({first_line(exc)})") from None
    for module in modules:
        mod = importlib.import_module(module)
        if hasattr(mod, name):
            return getattr(mod, name)
    raise EnvConfigError(
        field, f"unknown name {name!r}; give a dotted path, or a name from {', '.join(modules)}"
    )


class RawReward(gym.Wrapper):
    """Puts the reward this wrapper receives into ``info["raw_reward"]`` (before any VecNormalize)."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info[RAW_REWARD] = float(reward)
        return obs, reward, terminated, truncated, info


def _wrap(env: gym.Env, wrappers: Sequence[Callable[[gym.Env], gym.Env]]) -> gym.Env:
    for w in wrappers:
        env = w(env)
    return env


def wrapper_chain(env_cfg: dict[str, Any]) -> list[Callable[[gym.Env], gym.Env]]:
    """The config's wrappers as callables ``env -> env``, in order (resolved, not yet applied)."""
    out = []
    for i, w in enumerate(env_cfg.get("wrappers", [])):
        cls = resolve(w["name"], f"env.wrappers[{i}].name", WRAPPER_MODULES)
        out.append(functools.partial(_apply_one, cls, dict(w.get("kwargs", {})), f"env.wrappers[{i}]"))
    return out


def _apply_one(cls: Any, kwargs: dict[str, Any], field: str, env: gym.Env) -> gym.Env:
    try:
        return cls(env, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise EnvConfigError(
            field, f"{cls.__name__} cannot wrap the env with {kwargs} ({first_line(exc)})"
        ) from None


def vector_wrapped(env_cfg: dict[str, Any]) -> bool:
    """Whether the config adds vector wrappers (VecNormalize, VecFrameStack), through which episodes
    must then run (a single gym env does not show the policy what it trained on)."""
    return bool(env_cfg.get("vec_normalize") or env_cfg.get("frame_stack"))


def make_env(env_cfg: dict[str, Any], kwargs: dict[str, Any]) -> gym.Env:
    """One env of the config with its wrappers (no Monitor, no vector wrappers)."""
    import rledger.envs  # noqa: F401  (registers the rledger/ ids)

    import_modules(env_cfg.get("import", []))
    env = gym.make(env_cfg["id"], **kwargs)
    return _wrap(env, wrapper_chain(env_cfg))


def make_vec(
    config: dict[str, Any],
    env_kwargs: dict[str, Any],
    n_envs: int,
    seed: int | None,
    reward_wrapper: Callable[[gym.Env], gym.Env] | None = None,
    training: bool = True,
) -> Any:
    """The run's VecEnv: SB3's ``make_vec_env`` with the config's wrappers, then ``VecNormalize`` and
    ``VecFrameStack`` when set. ``training=False``: the normalization's statistics frozen and the
    reward left as the env gives it (for evaluation). A plain config gives exactly what
    ``make_vec_env(id, ...)`` gave before these options existed."""
    from stable_baselines3.common.env_util import make_vec_env

    import rledger.envs  # noqa: F401

    env_cfg = config["env"]
    import_modules(env_cfg.get("import", []))
    chain = wrapper_chain(env_cfg) + ([reward_wrapper] if reward_wrapper else [])
    norm = env_cfg.get("vec_normalize")
    if norm:
        chain.append(RawReward)
    venv = make_vec_env(
        env_cfg["id"],
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs,
        wrapper_class=functools.partial(_wrap, wrappers=chain) if chain else None,
    )
    if norm:
        from stable_baselines3.common.vec_env import VecNormalize

        kw = {"gamma": float(config.get("ppo", {}).get("gamma", 0.99)), **norm}
        if not training:
            kw["norm_reward"] = False
        venv = VecNormalize(venv, training=training, **kw)
    stack = env_cfg.get("frame_stack")
    if stack:
        from stable_baselines3.common.vec_env import VecFrameStack

        venv = VecFrameStack(venv, n_stack=int(stack))
    return venv


def find_normalize(venv: Any) -> Any:
    """The VecNormalize inside ``venv``'s vector wrappers, or None."""
    from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

    while isinstance(venv, VecEnvWrapper):
        if isinstance(venv, VecNormalize):
            return venv
        venv = venv.venv
    return None


def _rms_arrays(prefix: str, rms: Any) -> dict[str, np.ndarray]:
    if isinstance(rms, dict):  # Dict observation spaces: one RunningMeanStd per key
        out: dict[str, np.ndarray] = {}
        for k, v in rms.items():
            out.update(_rms_arrays(f"{prefix}.{k}", v))
        return out
    return {f"{prefix}.mean": rms.mean, f"{prefix}.var": rms.var, f"{prefix}.count": np.asarray(rms.count)}


def save_normalize(venv: Any, path: Path) -> bool:
    """Write the VecNormalize statistics of ``venv`` to ``path`` (``.npz``, whole or not at all);
    False when it has none."""
    import io

    from rledger.ledger.writer import atomic_write_bytes

    norm = find_normalize(venv)
    if norm is None:
        return False
    arrays = {**_rms_arrays("ret_rms", norm.ret_rms)}
    if norm.norm_obs:
        arrays.update(_rms_arrays("obs_rms", norm.obs_rms))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return True


def load_normalize(venv: Any, path: Path) -> None:
    """Put the statistics :func:`save_normalize` wrote into ``venv``'s VecNormalize."""
    norm = find_normalize(venv)
    if norm is None:
        return
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}

    def fill(prefix: str, rms: Any) -> None:
        if isinstance(rms, dict):
            for k, v in rms.items():
                fill(f"{prefix}.{k}", v)
            return
        rms.mean, rms.var = arrays[f"{prefix}.mean"], arrays[f"{prefix}.var"]
        rms.count = float(arrays[f"{prefix}.count"])

    fill("ret_rms", norm.ret_rms)
    if norm.norm_obs:
        fill("obs_rms", norm.obs_rms)


def carry_normalize(old: Any, new: Any) -> None:
    """The running statistics of ``old``'s VecNormalize go on in ``new``'s (an opening phase's
    switch of env keeps what the normalization has learned)."""
    import copy

    a, b = find_normalize(old), find_normalize(new)
    if a is not None and b is not None:
        b.obs_rms, b.ret_rms = copy.deepcopy(a.obs_rms), copy.deepcopy(a.ret_rms)
