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

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rledger.envs  # noqa: F401
from rledger.envs.wrappers import AffineReward
from rledger.ledger.writer import atomic_write_bytes, atomic_write_json
from rledger.probes.policies import policy_table

if TYPE_CHECKING:
    import pandas as pd


def _model(cls: type, env_id: str, c: float, b: float, seed: int, zero_critic: bool, **kwargs: Any) -> Any:
    """A PPO-family model (``cls``) on one env whose reward is mapped to ``c * r + b``; with
    ``zero_critic`` the value head starts at zero (it stays there when ``vf_coef`` is 0)."""

    venv = make_vec_env(
        env_id, n_envs=1, seed=seed, wrapper_class=functools.partial(AffineReward, scale=c, offset=b)
    )
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


EXPERIMENT = "reward_scale"


def variant_name(setting: str, c: float, b: float) -> str:
    """The run variant of (setting, c, b), e.g. ``no_global_clip.c10_b0``."""
    return f"{setting}.c{c:g}_b{b:g}"


def sweep_spec(
    env_id: str = "rledger/BoatRace-v0",
    grid: tuple[tuple[float, float], ...] = GRID,
    settings: tuple[str, ...] = tuple(SETTINGS),
    seeds: tuple[int, ...] = (0, 1, 2),
    timesteps: int = 16_384,
) -> Any:
    """The sweep as an experiment spec (:class:`rledger.experiments.Spec`) named ``reward_scale``: one
    variant per (setting, c, b), the baseline (c=1, b=0) of each setting included, each trained on
    ``c * reward + b`` with SB3's defaults minus the setting's parts; no evaluation episodes."""
    from rledger.experiments.spec import validate

    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"reward_scale settings: unknown {unknown}; choose from {list(SETTINGS)}")
    pairs = ((1.0, 0.0), *[p for p in grid if p != (1.0, 0.0)])
    options: dict[str, Any] = {}
    for setting in settings:
        opts = dict(SETTINGS[setting])
        zero_critic = opts.pop("zero_critic", False)
        for c, b in pairs:
            entry: dict[str, Any] = {"reward": {"scale": float(c), "offset": float(b)}}
            if opts:
                entry["ppo"] = dict(opts)
            if zero_critic:
                entry["zero_critic"] = True
            options[variant_name(setting, c, b)] = entry
    raw = {
        "name": EXPERIMENT,
        "env": {"id": env_id},
        "variants": {v: {} for v in options},
        "variant_options": options,
        "seeds": list(seeds),
        "total_timesteps": int(timesteps),
        "eval": {"episodes": 0},
    }
    return validate(raw, "reward_scale sweep")


def sweep(
    out: str,
    env_id: str = "rledger/BoatRace-v0",
    grid: tuple[tuple[float, float], ...] = GRID,
    settings: tuple[str, ...] = tuple(SETTINGS),
    seeds: tuple[int, ...] = (0, 1, 2),
    timesteps: int = 16_384,
    workers: int = 2,
    overwrite: bool = False,
    show: bool = False,
    trust_pickles: bool = False,
) -> pd.DataFrame:
    """Train every (setting, c, b, seed) through the experiment runner into
    ``<out>/reward_scale/<variant>/seed=<k>/`` (complete runs are skipped, interrupted ones rerun; a
    complete run with another configuration is refused unless ``overwrite``), then
    :func:`compare_sweep`."""
    from rledger.experiments.backends import plan_runs, run_local, save_spec
    from rledger.experiments.run import command_line

    spec = sweep_spec(env_id, grid, settings, seeds, timesteps)
    jobs = plan_runs(spec, out, overwrite)
    save_spec(spec, out)
    run_local(jobs, workers, command_line(), overwrite, show=show)
    return compare_sweep(Path(out) / spec.name, trust_pickles)


def compare_sweep(folder: str | Path, trust_pickles: bool = False) -> pd.DataFrame:
    """Compare every complete run of the sweep in ``folder`` (``<out>/reward_scale``) with the
    baseline (c=1, b=0) of its setting and seed; writes and returns ``<folder>/sweep.csv``: one row
    per run with the actor's largest parameter difference (absolute and relative to the largest
    parameter), the share of reachable states where the greedy action is the baseline's, and from
    the ledgers the share of optimizer steps whose global gradient clipping engaged (``clip_coef <
    1``), the mean value loss, and the largest differences of ``advantage_used`` and ``ratio``. The
    ``rollout0_*`` and ``first_minibatch_*`` columns compare the first rollout, whose data are
    identical in both runs (same seed, same policy before the first update): they isolate what c and
    b do to one update. Later rollouts collect different data once a sampled action differs, so the
    end-of-run columns also include that amplification. ``trust_pickles``: see
    :func:`~rledger.experiments.run.load_model`."""
    import pandas as pd

    from rledger.experiments.backends import run_configs
    from rledger.experiments.run import DONE, load_model
    from rledger.ledger import Ledger

    root = Path(folder)
    runs = {
        (cfg["variant"], cfg["seed"]): (path, cfg)
        for path, cfg in run_configs(root)
        if (path / DONE).is_file() and "reward" in cfg
    }
    cache: dict[Path, tuple[dict[str, np.ndarray], np.ndarray]] = {}

    def policy(path: Path, env_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if path not in cache:
            model = load_model(path, trust_pickles)
            env = gym.make(env_id)
            probs = policy_table(model, env) if hasattr(env.unwrapped, "mdp") else np.zeros(0)
            cache[path] = (actor_params(model), probs)
        return cache[path]

    rows = []
    first = "SELECT t, env, advantage_used FROM samples WHERE rollout = 0 AND epoch = 0 AND minibatch = 0 ORDER BY t, env"
    roll0 = "SELECT advantage_used, ratio FROM samples WHERE rollout = 0 ORDER BY epoch, minibatch, t, env"
    for (variant, seed), (path, cfg) in sorted(runs.items()):
        setting = variant.split(".", 1)[0]
        c, b = float(cfg["reward"]["scale"]), float(cfg["reward"]["offset"])
        base = runs.get((variant_name(setting, 1.0, 0.0), seed))
        if base is None:
            continue  # the baseline of this setting and seed is not complete (yet)
        (mine, mine_probs), (theirs, base_probs) = (
            policy(path, cfg["env"]["id"]),
            policy(base[0], cfg["env"]["id"]),
        )
        diff, scale = max_param_diff(theirs, mine)
        same = (
            float((mine_probs.argmax(1) == base_probs.argmax(1)).mean()) if mine_probs.size else float("nan")
        )
        led, bled = Ledger(path / "ledger"), Ledger(base[0] / "ledger")
        u = led.sql(
            "SELECT avg((clip_coef < 1)::INT) AS clip_engaged, avg(value_loss) AS value_loss FROM updates"
        ).iloc[0]
        a0, b0 = led.sql(first), bled.sql(first)
        r0, q0 = led.sql(roll0), bled.sql(roll0)
        rows.append({
            "setting": setting, "c": c, "b": b, "seed": int(seed),
            "actor_max_diff": diff, "actor_rel_diff": diff / scale, "same_greedy_action": same,
            "clip_engaged": float(u.clip_engaged), "value_loss": float(u.value_loss),
            "first_minibatch_adv_diff": float(np.abs(a0.advantage_used.to_numpy() - b0.advantage_used.to_numpy()).max()),
            "rollout0_adv_diff": float(np.abs(r0.advantage_used.to_numpy() - q0.advantage_used.to_numpy()).max()),
            "rollout0_ratio_diff": float(np.abs(r0.ratio.to_numpy() - q0.ratio.to_numpy()).max()),
        })  # fmt: skip
        led.close()
        bled.close()
    if not rows:
        raise ValueError(
            f"{root}: no complete reward-scale sweep runs with their baselines; run the sweep first"
        )
    order = {s: i for i, s in enumerate(SETTINGS)}
    table = pd.DataFrame(rows).sort_values(
        ["setting", "c", "b", "seed"], key=lambda x: x.map(order) if x.name == "setting" else x
    )
    table = table.reset_index(drop=True)
    atomic_write_bytes(root / "sweep.csv", table.to_csv(index=False).encode())
    return table


if (
    __name__ == "__main__"
):  # python -m rledger.probes.reward_scale OUT [TIMESTEPS] [--identity] [--trust-pickles]
    import sys

    flags = {"--identity", "--trust-pickles"}
    args = [a for a in sys.argv[1:] if a not in flags]
    if not args:
        sys.exit(
            "usage: python -m rledger.probes.reward_scale OUT [TIMESTEPS] [--identity: the plain-SGD identity "
            "only] [--trust-pickles: load models of runs without policy.npz by unpickling model.zip]"
        )
    if "--identity" not in sys.argv:
        result = sweep(
            args[0],
            timesteps=int(args[1]) if len(args) > 1 else 16_384,
            show=True,
            trust_pickles="--trust-pickles" in sys.argv,
        )
        print(
            result.groupby(["setting", "c", "b"])[
                ["actor_rel_diff", "same_greedy_action", "clip_engaged"]
            ].mean()
        )
    identity = {f"c={c:g}": sgd_identity(c=c) for c in (3.0, 10.0)}
    atomic_write_json(Path(args[0]) / EXPERIMENT / "identity.json", identity)
    print(identity)
