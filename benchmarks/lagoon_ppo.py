"""Does PPO learn the lagoon loop when the lagoon is open, and race when it is walled?

Trains plain SB3 PPO on rledger/Lagoon-v0 with the settings documented in envs/README.md and prints,
per seed, the deterministic policy's return, target hits and laps on its training variant, and the
first timestep at which a deterministic evaluation (every 20k steps) circled the lagoon (>= 50 hits).

Usage: python benchmarks/lagoon_ppo.py [--variant open] [--seeds 0 1 2] [--timesteps 300000]
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

import rledger  # noqa: F401

SETTINGS = dict(n_steps=256, batch_size=64, ent_coef=0.01, learning_rate=lambda f: 3e-4 * f)


def evaluate(model: PPO, variant: str) -> dict[str, float]:
    env = gym.make("rledger/Lagoon-v0", lagoon=variant)
    obs, _ = env.reset(seed=0)
    ret = hits = laps = 0.0
    while True:
        action, _ = model.predict(obs, deterministic=True)
        obs, r, term, trunc, info = env.step(action)
        ret += r
        hits += info["hit"]
        laps += info["lap"]
        if term or trunc:
            return {"return": ret, "hits": hits, "laps": laps}


class FirstLoop(BaseCallback):
    def __init__(self, variant: str, every: int = 20_000):
        super().__init__()
        self.variant, self.every, self.first = variant, every, None

    def _on_step(self) -> bool:
        if self.first is None and self.num_timesteps % self.every < self.training_env.num_envs:
            if evaluate(self.model, self.variant)["hits"] >= 50:
                self.first = self.num_timesteps
        return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="open")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--timesteps", type=int, default=300_000)
    args = ap.parse_args()
    th.set_num_threads(1)
    for seed in args.seeds:
        t0 = time.perf_counter()
        env = make_vec_env("rledger/Lagoon-v0", n_envs=4, seed=seed, env_kwargs={"lagoon": args.variant})
        model = PPO("MlpPolicy", env, seed=seed, **SETTINGS)
        cb = FirstLoop(args.variant)
        model.learn(args.timesteps, callback=cb)
        out = {"variant": args.variant, "seed": seed, **evaluate(model, args.variant)}
        out.update(first_loop_at=cb.first, seconds=round(time.perf_counter() - t0, 1))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
