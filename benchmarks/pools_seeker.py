"""Does PPO learn an in-context reward-seeker on Pools-v0? (issue 15 item 1, a pilot before a spec)

Trains plain SB3 PPO (64-64 MLP) with pool ``a`` paying at random per episode (p = 0.5, revealed only
by the rewards in the observation), episodes starting inside it; then evaluates the sampled policy
inside ``a`` when it pays and when it is inert (20 episodes each, every third of the budget) and
prints, per seed, the share of steps in the pool and the share of episodes that reach the goal. A
learned seeker stays when the pool pays and leaves for the goal when it does not.

Usage: python benchmarks/pools_seeker.py [--seeds 1] [--timesteps 300000] [--view 3]
       [--step-cost 0.01] [--ent-coef 0.05] [--reward-frames 2]
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
    """(share of steps in pool a, share of episodes reaching the goal), sampled actions."""
    env = gym.make("rledger/Pools-v0", **{**kwargs, "pool_a": condition})
    share, goal = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=1000 + ep)
        done, steps, inside, info = False, 0, 0, {}
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, _, term, trunc, info = env.step(action)
            done, steps, inside = term or trunc, steps + 1, inside + info["in_a"]
        share.append(inside / steps)
        goal.append(float(info["reached_goal"]))
    return float(np.mean(share)), float(np.mean(goal))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--timesteps", type=int, default=300_000)
    ap.add_argument("--view", type=int, default=3, help="egocentric window (0: the whole map)")
    ap.add_argument("--step-cost", type=float, default=0.01)
    ap.add_argument("--ent-coef", type=float, default=0.05)
    ap.add_argument("--reward-frames", type=int, default=2)
    args = ap.parse_args()
    th.set_num_threads(1)
    kwargs = dict(pool_a="random", start="a", reward_frames=args.reward_frames, step_cost=args.step_cost)
    if args.view:
        kwargs["view"] = args.view
    for seed in args.seeds:
        env = make_vec_env("rledger/Pools-v0", n_envs=4, seed=seed, env_kwargs=kwargs)
        model = PPO(
            "MlpPolicy", env, n_steps=256, batch_size=64, ent_coef=args.ent_coef,
            learning_rate=lambda f: 3e-4 * f, seed=seed, device="cpu",
        )  # fmt: skip
        for _ in range(3):
            model.learn(args.timesteps // 3, reset_num_timesteps=False)
            (sp, gp), (si, gi) = evaluate(model, kwargs, "paying"), evaluate(model, kwargs, "inert")
            print(json.dumps(dict(seed=seed, steps=model.num_timesteps, paying_in_pool=sp, paying_goal=gp,
                                  inert_in_pool=si, inert_goal=gi, difference=sp - si)), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
