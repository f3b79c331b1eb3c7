"""The gridworlds' step rate: today's source tree against an older one, and the new observation features
against the plain observation, interleaved in one run.

Each configuration is stepped with seeded random actions (resets included) in a fresh process per
source tree and repeat, in the order A B / B A alternately; each process reports the best of three
timings of ``--steps`` steps (thread CPU time, so another job on the other core changes little).
Printed per configuration: steps per second in each tree, and the ratio (B's rate over A's; below 1:
slower) with a 95% bootstrap interval over the repeats. Configurations that tree A cannot build (a
keyword it does not know) are timed in B alone and compared with B's plain configuration of the
same env: the cost of the feature itself.

    git worktree add /tmp/before 1ce8da6~1   # before the egocentric view and Pools-v0
    python benchmarks/bench_env_steps.py /tmp/before/src src [--steps 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "boat race": ("rledger/BoatRace-v0", {}),
    "lagoon": ("rledger/Lagoon-v0", {}),
    "tamper": ("rledger/Tamper-v0", {}),
    "relocate": ("rledger/Relocate-v0", {}),
    "lagoon, reward_frames=4": ("rledger/Lagoon-v0", {"reward_frames": 4}),
    "lagoon, view=5": ("rledger/Lagoon-v0", {"view": 5}),
    "lagoon, view=5, reward_frames=4": ("rledger/Lagoon-v0", {"view": 5, "reward_frames": 4}),
    "pools (two instances)": ("rledger/Pools-v0", {}),
}
BASELINE = {  # a feature's configuration -> the plain configuration of the same tree it is read against
    "lagoon, reward_frames=4": "lagoon",
    "lagoon, view=5": "lagoon",
    "lagoon, view=5, reward_frames=4": "lagoon, reward_frames=4",
    "pools (two instances)": "lagoon",
}

CHILD = """
import json, sys, time
import gymnasium as gym
import numpy as np
import rledger.envs  # registers the gridworlds
env_id, kwargs, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
try:
    env = gym.make(env_id, **kwargs)
except (TypeError, gym.error.Error) as exc:  # this tree does not have the feature
    print(json.dumps(None)); sys.exit(0)
actions = np.random.default_rng(0).integers(0, env.action_space.n, size=steps)
best = float("inf")
for _ in range(3):
    env.reset(seed=0)
    t0 = time.thread_time()
    for a in actions:
        _, _, term, trunc, _ = env.step(int(a))
        if term or trunc:
            env.reset()
    best = min(best, time.thread_time() - t0)
print(json.dumps(steps / best))
"""


def rate(src: str, env_id: str, kwargs: dict[str, object], steps: int) -> float | None:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, env_id, json.dumps(kwargs), str(steps)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio_interval(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median of b over median of a, with a 95% percentile-bootstrap interval over the paired repeats."""
    x, y = np.asarray(a), np.asarray(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(2000, len(x)))
    boot = np.median(y[idx], 1) / np.median(x[idx], 1)
    return (
        float(np.median(y) / np.median(x)),
        float(np.percentile(boot, 2.5)),
        float(np.percentile(boot, 97.5)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the older source tree (its src folder)")
    ap.add_argument("b", help="the newer source tree")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rates: dict[str, dict[str, list[float]]] = {name: {"a": [], "b": []} for name in CONFIGS}
    for r in range(args.repeats):
        for name, (env_id, kwargs) in CONFIGS.items():
            for tree in ("a", "b") if r % 2 == 0 else ("b", "a"):
                got = rate(getattr(args, tree), env_id, kwargs, args.steps)
                if got is not None:
                    rates[name][tree].append(got)
        print(
            f"repeat {r + 1}: "
            + json.dumps({k: {t: v[-1] for t, v in d.items() if v} for k, d in rates.items()})
        )
    print(
        f"\nsteps per second (median of {args.repeats} processes, each the best of 3 x {args.steps} steps):"
    )
    for name, d in rates.items():
        a, b = d["a"], d["b"]
        if a and b:
            est, lo, hi = ratio_interval(a, b)
            print(
                f"  {name:34s} A {np.median(a):9.0f}  B {np.median(b):9.0f}  B/A {est:.3f} [{lo:.3f}, {hi:.3f}]"
            )
        else:
            base = rates[BASELINE[name]]["b"]
            est, lo, hi = ratio_interval(base, b)
            print(
                f"  {name:34s} A   (absent)  B {np.median(b):9.0f}  against B's {BASELINE[name]}: "
                f"{est:.3f} [{lo:.3f}, {hi:.3f}]"
            )


if __name__ == "__main__":
    main()
