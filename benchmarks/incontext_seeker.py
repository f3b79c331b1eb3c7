"""Does PPO learn an in-context reward-seeker on the lagoon? (issue 15 item 1, a pilot before a spec)

Trains plain SB3 PPO (64-64 MLP) on Lagoon-v0 with the targets paying at random per episode
(``lagoon="random"``, p = 0.5, revealed only by the rewards in the observation), episodes starting
inside the lagoon; then evaluates the sampled policy there when the targets pay (``open``) and when
they do not (``inert``), 20 episodes each, every third of the budget, and prints per seed the share of
steps in the lagoon and the laps per episode. A learned seeker stays when the lagoon pays and leaves
to race laps when it does not. Pools-v0's pilot is ``benchmarks/pools_seeker.py``.

Usage: python benchmarks/incontext_seeker.py [--seeds 1] [--timesteps 300000] [--view 3]
       [--ent-coef 0.05] [--reward-frames 2] [--n-steps 256]
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rledger  # noqa: F401


def evaluate(model: PPO, kwargs: dict, condition: str, episodes: int = 20) -> tuple[float, float]:
    """(share of steps in the lagoon, laps per episode), sampled actions."""
    env = gym.make("rledger/Lagoon-v0", **{**kwargs, "lagoon": condition})
    share, laps = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=1000 + ep)
        done, steps, inside, lap = False, 0, 0, 0
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, _, term, trunc, info = env.step(action)
            done, steps = term or trunc, steps + 1
            inside, lap = inside + info["in_lagoon"], lap + info["lap"]
        share.append(inside / steps)
        laps.append(lap)
    return float(np.mean(share)), float(np.mean(laps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--timesteps", type=int, default=300_000)
    ap.add_argument("--view", type=int, default=3, help="egocentric window (0: the whole map)")
    ap.add_argument("--ent-coef", type=float, default=0.05)
    ap.add_argument("--reward-frames", type=int, default=2)
    ap.add_argument("--n-steps", type=int, default=256)
    ap.add_argument("--gamma", type=float, default=0.99)
    args = ap.parse_args()
    th.set_num_threads(1)
    kwargs = dict(lagoon="random", start="lagoon", reward_frames=args.reward_frames)
    if args.view:
        kwargs["view"] = args.view
    for seed in args.seeds:
        env = make_vec_env("rledger/Lagoon-v0", n_envs=4, seed=seed, env_kwargs=kwargs)
        model = PPO(
            "MlpPolicy", env, n_steps=args.n_steps, batch_size=64, ent_coef=args.ent_coef, gamma=args.gamma,
            learning_rate=lambda f: 3e-4 * f, seed=seed, device="cpu",
        )  # fmt: skip
        for _ in range(3):
            model.learn(args.timesteps // 3, reset_num_timesteps=False)
            (sp, lp), (si, li) = evaluate(model, kwargs, "open"), evaluate(model, kwargs, "inert")
            print(json.dumps(dict(seed=seed, steps=model.num_timesteps, paying_in_lagoon=sp, paying_laps=lp,
                                  inert_in_lagoon=si, inert_laps=li, difference=sp - si)), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
