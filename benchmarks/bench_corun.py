"""What a second thread costs the training thread: rledger's background thread against a stand-in.

InstrumentedPPO's training thread does little more Python work than plain PPO's (cProfile: the
recording calls are a few tenths of a second of a 20,480-step run), yet its CPU time, read with
``time.thread_time()``, is higher. This benchmark asks whether any thread doing numerical work beside
training costs the training thread the same (caches and memory bandwidth shared between the cores),
whatever that work is. Interleaved, ``--pairs`` times, 20,480 CartPole steps at SB3 defaults, torch on
one thread:

- ``plain``: SB3's PPO;
- ``rledger``: InstrumentedPPO with its defaults (the background thread computes the per-sample columns
  and writes the ledger while the next rollout is collected);
- ``stand-in``: SB3's PPO with a thread that, at the start of every rollout after the first, does
  torch matrix products (the GIL released) for as much thread CPU time as rledger's background thread
  took per rollout in the same round.

Prints per condition the training thread's CPU time and the process's (all threads), as medians and
as ratios of medians to plain PPO with paired bootstrap intervals over the rounds
(``bench_ledgers.bootstrap_ratio``). If the stand-in raises the training
thread's CPU as much as rledger does, that part of the overhead comes from running a second thread at
all, not from rledger's code in the training thread.

    python benchmarks/bench_corun.py [--pairs 5] [--steps 20480]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_ledgers import bootstrap_ratio


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class StandIn:
    """A thread that burns ``burst`` seconds of its own CPU time in torch matmuls each time it is
    signalled."""

    def __init__(self, burst: float):
        import torch as th

        self.burst = burst
        self.go = threading.Event()
        self.stop = False
        self.a, self.b = th.randn(16, 128, 128), th.randn(16, 128, 128)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import torch as th

        # one thread, as training: in a new thread MKL's batched matmul otherwise starts a second
        # worker of its own (torch.set_num_threads in the main thread does not reach it), which
        # doubles the stand-in's CPU time
        th.set_num_threads(1)
        while True:
            self.go.wait()
            self.go.clear()
            if self.stop:
                return
            t0 = time.thread_time()
            while time.thread_time() - t0 < self.burst:
                th.bmm(self.a, self.b)

    def close(self) -> None:
        self.stop = True
        self.go.set()
        self.thread.join()


def one(kind: str, steps: int, burst: float) -> tuple[float, float]:
    """(training thread CPU, process CPU) seconds of one learn() call."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from rledger import InstrumentedPPO

    callback = None
    stand_in = None
    if kind == "rledger":
        model = InstrumentedPPO(
            "MlpPolicy", "CartPole-v1", seed=0, device="cpu", ledger=Path(tempfile.mkdtemp()) / "run"
        )
    else:
        model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    if kind == "stand-in":
        stand_in = StandIn(burst)

        class Signal(BaseCallback):
            def _on_rollout_start(self) -> None:
                if self.model.num_timesteps > 0:  # the background thread has work from the 2nd on
                    stand_in.go.set()

            def _on_step(self) -> bool:
                return True

        callback = Signal()
    t0, c0 = time.thread_time(), process_cpu()
    model.learn(steps, callback=callback)
    out = time.thread_time() - t0, process_cpu() - c0
    if stand_in is not None:
        stand_in.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20480)
    args = ap.parse_args()
    import torch as th

    th.set_num_threads(1)
    rollouts = args.steps // 2048
    res: dict[str, list[tuple[float, float]]] = {"plain": [], "rledger": [], "stand-in": []}
    one("plain", 2048, 0.0)  # warm-up: first-call costs (imports, torch's kernels) out of round 1
    one("rledger", 2048, 0.0)
    for i in range(args.pairs):
        plain = one("plain", args.steps, 0.0)
        rl = one("rledger", args.steps, 0.0)
        burst = max(0.0, rl[1] - rl[0]) / max(1, rollouts - 1)  # the background thread's CPU per rollout
        stand = one("stand-in", args.steps, burst)
        for k, v in zip(res, (plain, rl, stand), strict=True):
            res[k].append(v)
        print(
            f"round {i + 1}: plain {plain[0]:.2f}/{plain[1]:.2f} s, rledger {rl[0]:.2f}/{rl[1]:.2f} s, "
            f"stand-in {stand[0]:.2f}/{stand[1]:.2f} s (training thread / all threads; burst {burst * 1e3:.0f} ms)",
            flush=True,
        )
    arr = {k: np.array(v) for k, v in res.items()}
    for k in ("rledger", "stand-in"):
        cells = []
        for col in (0, 1):  # ratio of medians, with the paired bootstrap over rounds
            a, b = arr[k][:, col], arr["plain"][:, col]
            lo, hi = bootstrap_ratio(a, b)
            cells.append(f"{np.median(a) / np.median(b):.3f}x [{lo:.3f}, {hi:.3f}]")
        print(f"{k} / plain: training thread CPU {cells[0]}, all threads {cells[1]}")
    print(
        "medians (s): "
        + ", ".join(f"{k} {np.median(a[:, 0]):.2f}/{np.median(a[:, 1]):.2f}" for k, a in arr.items())
    )


if __name__ == "__main__":
    main()
