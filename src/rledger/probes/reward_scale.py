"""Probe 5 (reward as a learning rate): train twice from the same seed, once with the reward mapped
to ``c * r + b``, and compare the policies.

With advantage normalization off, plain SGD, no gradient clipping, no probability-ratio clipping, no
entropy bonus and a critic that stays zero (``vf_coef = 0`` and a zeroed value head), the advantage is
linear in the reward, so ``(reward * c, lr)`` and ``(reward, lr * c)`` take the same policy steps: the
reward enters the update as a per-sample learning-rate factor. :func:`sgd_identity` measures how
closely that holds in float32; :func:`divergence` measures how far SB3's default PPO (per-minibatch
advantage normalization, Adam, global gradient clipping) drifts when only the reward's scale and
offset change.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rledger.envs  # noqa: F401


def _train(
    env_id: str, scale: float, offset: float, seed: int, timesteps: int, zero_critic: bool, **ppo: Any
) -> PPO:
    def wrap(env: gym.Env) -> gym.Env:
        return gym.wrappers.TransformReward(env, lambda r: scale * r + offset)

    venv = make_vec_env(env_id, n_envs=1, seed=seed, wrapper_class=wrap)
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", **ppo)
    if zero_critic:
        with th.no_grad():
            model.policy.value_net.weight.zero_()
            model.policy.value_net.bias.zero_()
    model.learn(timesteps)
    return model


def _max_param_diff(a: PPO, b: PPO) -> tuple[float, float]:
    """Largest absolute difference of the actor's parameters, and the largest parameter change."""
    pa = {k: v.detach() for k, v in a.policy.named_parameters()}
    pb = {k: v.detach() for k, v in b.policy.named_parameters()}
    keys = [k for k in pa if not k.startswith(("value_net", "mlp_extractor.value_net"))]
    return max(float((pa[k] - pb[k]).abs().max()) for k in keys), max(float(pa[k].abs().max()) for k in keys)


def sgd_identity(
    env_id: str = "rledger/BoatRace-v0", c: float = 4.0, lr: float = 1e-3, seed: int = 0, timesteps: int = 512
) -> dict[str, float]:
    """Max difference of the actor's parameters between (reward*c, lr) and (reward, lr*c) training,
    against the difference between (reward, lr) and (reward, lr*c) (the size of what c changes)."""
    common: dict[str, Any] = dict(
        n_steps=128, batch_size=64, n_epochs=2, normalize_advantage=False, ent_coef=0.0, vf_coef=0.0,
        clip_range=1e9, max_grad_norm=1e9, policy_kwargs=dict(optimizer_class=th.optim.SGD, optimizer_kwargs={}),
    )  # fmt: skip
    scaled = _train(env_id, c, 0.0, seed, timesteps, True, learning_rate=lr, **common)
    fast = _train(env_id, 1.0, 0.0, seed, timesteps, True, learning_rate=lr * c, **common)
    plain = _train(env_id, 1.0, 0.0, seed, timesteps, True, learning_rate=lr, **common)
    same, scale = _max_param_diff(scaled, fast)
    changed, _ = _max_param_diff(plain, fast)
    return {"max_diff_reward_x_c_vs_lr_x_c": same, "max_diff_lr_vs_lr_x_c": changed, "max_abs_param": scale}


def divergence(
    env_id: str = "rledger/BoatRace-v0", c: float = 10.0, b: float = 0.0, seed: int = 0, timesteps: int = 4096
) -> dict[str, float]:
    """SB3-default PPO trained on (reward) and on (c * reward + b) from one seed: the largest
    difference of the actor's parameters at the end (0 would mean the reward's scale never reached
    the policy)."""
    a = _train(env_id, 1.0, 0.0, seed, timesteps, False, n_steps=256)
    z = _train(env_id, c, b, seed, timesteps, False, n_steps=256)
    diff, scale = _max_param_diff(a, z)
    return {"max_actor_param_diff": diff, "max_abs_param": scale, "c": c, "b": b}
