"""Probe 5 (reward as a learning rate): train twice from the same seed, once with the reward mapped
to ``c * r + b``, and compare the policies.

With advantage normalization off, plain SGD, no gradient clipping, no probability-ratio clipping, no
entropy bonus and a critic that stays zero (``vf_coef = 0`` and a zeroed value head), the advantage is
linear in the reward, so ``(reward * c, lr)`` and ``(reward, lr * c)`` take the same policy steps: the
reward enters the update as a per-sample learning-rate factor. :func:`sgd_identity` measures how
closely that holds in float32; the sweep (:func:`sweep`, :func:`compare_sweep`) measures how far SB3's
default PPO (per-minibatch advantage normalization, Adam, global gradient clipping) drifts when only
the reward's scale and offset change, and which of its parts carry the change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rledger.envs  # noqa: F401
from rledger.ledger.writer import atomic_write_json
from rledger.probes.policies import policy_table

if TYPE_CHECKING:
    import pandas as pd


def _model(cls: type, env_id: str, c: float, b: float, seed: int, zero_critic: bool, **kwargs: Any) -> Any:
    """A PPO-family model (``cls``) on one env whose reward is mapped to ``c * r + b``; with
    ``zero_critic`` the value head starts at zero (it stays there when ``vf_coef`` is 0)."""

    def wrap(env: gym.Env) -> gym.Env:
        return gym.wrappers.TransformReward(env, lambda r: c * r + b)

    venv = make_vec_env(env_id, n_envs=1, seed=seed, wrapper_class=wrap)
    model = cls("MlpPolicy", venv, seed=seed, device="cpu", **kwargs)
    if zero_critic:
        with th.no_grad():
            model.policy.value_net.weight.zero_()
            model.policy.value_net.bias.zero_()
    return model


def _train(env_id: str, c: float, b: float, seed: int, timesteps: int, zero_critic: bool, **ppo: Any) -> PPO:
    model = _model(PPO, env_id, c, b, seed, zero_critic, **ppo)
    model.learn(timesteps)
    return model


def actor_params(model: Any) -> dict[str, np.ndarray]:
    """The policy's parameters outside the value head, as numpy copies."""
    return {
        k: v.detach().numpy().copy()
        for k, v in model.policy.named_parameters()
        if not k.startswith(("value_net", "mlp_extractor.value_net"))
    }


def max_param_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    """Largest absolute difference between two sets of actor parameters, and the largest |parameter| of ``a``."""
    return max(float(np.abs(a[k] - b[k]).max()) for k in a), max(float(np.abs(a[k]).max()) for k in a)


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
    same, scale = max_param_diff(actor_params(scaled), actor_params(fast))
    changed, _ = max_param_diff(actor_params(plain), actor_params(fast))
    return {"max_diff_reward_x_c_vs_lr_x_c": same, "max_diff_lr_vs_lr_x_c": changed, "max_abs_param": scale}


# ------------------------------------------------------------------ the sweep over (c, b)
# Each setting removes one more part of PPO through which the reward's scale can reach the policy:
# global gradient clipping (the value loss's gradient, which grows with c, shrinks the policy step
# through clip_coef), then the learned critic (its values lag behind the scaled returns, so the
# advantages are not just rescaled). What is left with neither is advantage normalization's eps and
# float rounding. An offset b is not a scale: it changes the reward of every step (a bonus for living).
SETTINGS: dict[str, dict[str, Any]] = {
    "sb3_defaults": {},
    "no_global_clip": {"max_grad_norm": 1e9},
    "no_global_clip_zero_critic": {"max_grad_norm": 1e9, "vf_coef": 0.0, "zero_critic": True},
}
GRID: tuple[tuple[float, float], ...] = (
    (1e-6, 0.0),
    (0.1, 0.0),
    (10.0, 0.0),
    (1000.0, 0.0),
    (1.0, 1.0),
    (1.0, -1.0),
)


def _sweep_job(
    env_id: str, setting: str, c: float, b: float, seed: int, timesteps: int, path: str
) -> dict[str, Any]:
    """One instrumented run on ``c * reward + b`` (SB3 defaults otherwise, minus the setting's parts);
    saves the policy's action probabilities in every reachable state (gridworlds) and the actor's
    parameters beside its ledger."""
    from rledger.ppo import InstrumentedPPO

    th.set_num_threads(1)
    opts = dict(SETTINGS[setting])
    zero_critic = opts.pop("zero_critic", False)
    model = _model(InstrumentedPPO, env_id, c, b, seed, zero_critic, ledger=path, overwrite=True, **opts)
    model.learn(timesteps)
    env = gym.make(env_id)
    probs = policy_table(model, env) if hasattr(env.unwrapped, "mdp") else np.zeros(0)
    tmp = Path(path) / ".policy.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, probs=probs, **actor_params(model))
    os.replace(tmp, Path(path) / "policy.npz")
    meta = _meta(env_id, setting, c, b, seed, timesteps)
    atomic_write_json(Path(path) / "meta.json", meta)  # last: marks the run complete
    return meta


def _meta(env_id: str, setting: str, c: float, b: float, seed: int, timesteps: int) -> dict[str, Any]:
    return {"env_id": env_id, "setting": setting, "c": c, "b": b, "seed": seed, "timesteps": timesteps}


def sweep_jobs(
    env_id: str,
    grid: tuple[tuple[float, float], ...],
    settings: tuple[str, ...],
    seeds: tuple[int, ...],
) -> list[tuple[str, str, float, float, int]]:
    """(env_id, setting, c, b, seed) of every run, the baseline (c=1, b=0) included, and its folder."""
    pairs = ((1.0, 0.0), *[p for p in grid if p != (1.0, 0.0)])
    return [(env_id, s, c, b, seed) for s in settings for c, b in pairs for seed in seeds]


def sweep(
    out: str,
    env_id: str = "rledger/BoatRace-v0",
    grid: tuple[tuple[float, float], ...] = GRID,
    settings: tuple[str, ...] = tuple(SETTINGS),
    seeds: tuple[int, ...] = (0, 1, 2),
    timesteps: int = 16_384,
    workers: int = 2,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Train every (setting, c, b, seed) with the ledger on, and compare each with the baseline
    (c=1, b=0) of its setting and seed. Returns and writes ``<out>/sweep.csv``: one row per run with
    the actor's largest parameter difference (absolute and relative to the largest parameter), the
    share of reachable states where the greedy action is the baseline's, and from the ledgers the share
    of optimizer steps whose global gradient clipping engaged (``clip_coef < 1``), the mean value loss,
    and the largest difference of ``advantage_used`` in the first minibatch (identical samples).
    Complete runs (``meta.json`` written last) are skipped; one with another configuration is
    refused unless ``overwrite``; incomplete ones are rerun."""
    import json
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    root = Path(out)
    jobs = sweep_jobs(env_id, grid, settings, seeds)
    paths = [str(root / s / f"c={c:g}_b={b:g}" / f"seed={seed}") for _, s, c, b, seed in jobs]
    todo = []
    for job, path in zip(jobs, paths, strict=True):
        meta = Path(path) / "meta.json"
        if meta.is_file():  # complete: skip it if it is this run, refuse to clobber it otherwise
            if json.loads(meta.read_text()) == _meta(*job, timesteps) and not overwrite:
                continue
            if not overwrite:
                raise ValueError(
                    f"{path}: a complete sweep run with another configuration ({json.dumps(json.loads(meta.read_text()))}); "
                    "pass overwrite=True (--overwrite) or another output folder"
                )
        todo.append((job, path))  # new, incomplete (no meta.json) or to overwrite
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_sweep_job, *job, timesteps, path) for job, path in todo]
        for f in futures:
            f.result()
    return compare_sweep(out)


def compare_sweep(out: str) -> pd.DataFrame:
    """Compare every run under ``out`` (``<setting>/c=<c>_b=<b>/seed=<k>``) with the baseline (c=1,
    b=0) of its setting and seed; writes and returns ``<out>/sweep.csv``. The ``rollout0_*`` columns
    compare the first rollout, whose data are identical in both runs (same seed, same policy before
    the first update): they isolate what c and b do to one update. Later rollouts collect different
    data once a sampled action differs, so the end-of-run columns also include that amplification."""
    import pandas as pd

    from rledger.ledger import Ledger
    from rledger.ledger.writer import atomic_write_bytes

    root = Path(out)
    rows = []
    first = "SELECT t, env, advantage_used FROM samples WHERE rollout = 0 AND epoch = 0 AND minibatch = 0 ORDER BY t, env"
    roll0 = "SELECT advantage_used, ratio FROM samples WHERE rollout = 0 ORDER BY epoch, minibatch, t, env"
    for path in sorted(root.glob("*/c=*_b=*/seed=*")):
        if not (path / "meta.json").is_file():
            continue
        setting, cb, seed_dir = path.parts[-3:]
        c, b = (float(x.split("=")[1]) for x in cb.split("_"))
        base_path = root / setting / "c=1_b=0" / seed_dir
        mine, base = np.load(path / "policy.npz"), np.load(base_path / "policy.npz")
        keys = [k for k in mine.files if k != "probs"]
        diff, scale = max_param_diff({k: base[k] for k in keys}, {k: mine[k] for k in keys})
        same = (
            float((mine["probs"].argmax(1) == base["probs"].argmax(1)).mean())
            if mine["probs"].size
            else float("nan")
        )
        led, bled = Ledger(path), Ledger(base_path)
        u = led.sql(
            "SELECT avg((clip_coef < 1)::INT) AS clip_engaged, avg(value_loss) AS value_loss FROM updates"
        ).iloc[0]
        a0, b0 = led.sql(first), bled.sql(first)
        r0, q0 = led.sql(roll0), bled.sql(roll0)
        rows.append({
            "setting": setting, "c": c, "b": b, "seed": int(seed_dir.split("=")[1]),
            "actor_max_diff": diff, "actor_rel_diff": diff / scale, "same_greedy_action": same,
            "clip_engaged": float(u.clip_engaged), "value_loss": float(u.value_loss),
            "first_minibatch_adv_diff": float(np.abs(a0.advantage_used.to_numpy() - b0.advantage_used.to_numpy()).max()),
            "rollout0_adv_diff": float(np.abs(r0.advantage_used.to_numpy() - q0.advantage_used.to_numpy()).max()),
            "rollout0_ratio_diff": float(np.abs(r0.ratio.to_numpy() - q0.ratio.to_numpy()).max()),
        })  # fmt: skip
        led.close()
        bled.close()
    order = {s: i for i, s in enumerate(SETTINGS)}
    table = pd.DataFrame(rows).sort_values(
        ["setting", "c", "b", "seed"], key=lambda x: x.map(order) if x.name == "setting" else x
    )
    table = table.reset_index(drop=True)
    atomic_write_bytes(root / "sweep.csv", table.to_csv(index=False).encode())
    return table


if __name__ == "__main__":  # python -m rledger.probes.reward_scale OUT [TIMESTEPS]: sweep + identity
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python -m rledger.probes.reward_scale OUT [TIMESTEPS]")
    result = sweep(sys.argv[1], timesteps=int(sys.argv[2]) if len(sys.argv) > 2 else 16_384)
    identity = {f"c={c:g}": sgd_identity(c=c) for c in (3.0, 10.0)}
    atomic_write_json(Path(sys.argv[1]) / "identity.json", identity)
    print(identity)
    print(
        result.groupby(["setting", "c", "b"])[["actor_rel_diff", "same_greedy_action", "clip_engaged"]].mean()
    )
