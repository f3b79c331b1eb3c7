"""learn() of two source trees of rledger against each other, interleaved in one run.

For a change that must not slow training (a restructuring): each repeat times InstrumentedPPO.learn()
(CartPole-v1, SB3 defaults, every table and column, background thread, 1 torch thread) once with each
tree, in fresh processes, in the order A B / B A alternately; prints the median wall and CPU (all
threads) time of each and the ratio B / A with a 95% bootstrap interval over the pairs.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_commits.py /tmp/before/src src [--steps 20480] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

CHILD = """
import json, resource, sys, tempfile, time, torch
torch.set_num_threads(1)
from rledger import InstrumentedPPO
m = InstrumentedPPO("MlpPolicy", "CartPole-v1", seed=int(sys.argv[2]), device="cpu",
                    ledger=tempfile.mkdtemp() + "/run")
t0, c0 = time.perf_counter(), time.process_time()
m.learn(int(sys.argv[1]))
print(json.dumps([time.perf_counter() - t0, time.process_time() - c0]))
"""


def time_tree(src: str, steps: int, seed: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(steps), str(seed)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    wall, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the src/ folder of the baseline tree")
    ap.add_argument("b", help="the src/ folder of the tree compared with it")
    ap.add_argument("--steps", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for r in range(args.repeats):
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            times[name].append(time_tree(getattr(args, name), args.steps, r))
    walls = np.array([[a[0], b[0]] for a, b in zip(times["a"], times["b"], strict=True)])
    rng = np.random.default_rng(0)
    boot = [
        np.median(walls[i, 1]) / np.median(walls[i, 0])
        for i in rng.integers(0, len(walls), size=(2000, len(walls)))
    ]
    result = {
        "a_wall_s": statistics.median(walls[:, 0]),
        "b_wall_s": statistics.median(walls[:, 1]),
        "ratio_b_over_a": statistics.median(walls[:, 1]) / statistics.median(walls[:, 0]),
        "ratio_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "cpu_ratio_b_over_a": statistics.median(c for _, c in times["b"])
        / statistics.median(c for _, c in times["a"]),
        "pairs": [round(b / a, 3) for a, b in walls],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
