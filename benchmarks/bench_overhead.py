"""Speed and memory of InstrumentedPPO against plain SB3 PPO, measured in the same run.

Prints ratios, not absolute targets (machines are noisy):
  1. learn() wall time, InstrumentedPPO (every table and column) / PPO, CartPole-v1, SB3 defaults,
     1 torch thread; runs interleaved, median of --repeats. Target <= 1.08.
  2. Per-sample math per minibatch: rledger's batched path vs torch.func vmap(grad) vs a naive
     per-sample autograd loop, at B=64 and B=512.
  3. Peak RSS of a long instrumented run against a 10x shorter one (separate processes).
  4. Bytes on disk per samples row.

Usage: python benchmarks/bench_overhead.py [--steps 20480] [--repeats 3] [--long 204800]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch as th


def time_learn(cls_name: str, steps: int, seed: int) -> float:
    from stable_baselines3 import PPO

    from rledger import InstrumentedPPO

    kwargs = {}
    if cls_name == "rledger":
        cls = InstrumentedPPO
        kwargs["ledger"] = tempfile.mkdtemp() + "/run"
    else:
        cls = PPO
    model = cls("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", **kwargs)
    t0 = time.perf_counter()
    model.learn(steps)
    return time.perf_counter() - t0


def bench_learn(steps: int, repeats: int) -> dict[str, float]:
    plain, inst = [], []
    for r in range(repeats):
        plain.append(time_learn("sb3", steps, r))
        inst.append(time_learn("rledger", steps, r))
    p, i = statistics.median(plain), statistics.median(inst)
    return {"ppo_s": p, "instrumented_s": i, "ratio": i / p}


def bench_persample(batch: int, reps: int = 5) -> dict[str, float]:
    """Per-sample score and loss-gradient norms for one minibatch of a default CartPole policy."""
    from stable_baselines3 import PPO
    from torch.func import grad, vmap

    from rledger import persample

    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    policy = model.policy
    obs = th.randn(batch, 4)
    act = th.randint(0, 2, (batch,))
    ret = th.randn(batch)
    params = {n: p.detach() for n, p in policy.named_parameters()}
    linears = persample.linear_modules(policy)

    def ours() -> th.Tensor:
        with persample.LinearCapture(linears) as cap:
            v, lp, _ = policy.evaluate_actions(obs, act)
        v = v.flatten()
        parts = [lp, v]
        sup = persample.supports(parts, cap.calls)
        d = persample.output_grads(parts, cap.calls, sup)
        g = persample.linear_gram(cap.calls, d, 2, lambda p: (th.ones_like(p), th.ones_like(p)))
        c = th.stack([-th.ones(batch), 2 * (v - ret).detach()], 1) / batch
        return persample.quad(g.g1, c)

    def loss_i(p: dict[str, th.Tensor], o: th.Tensor, a: th.Tensor, r: th.Tensor) -> th.Tensor:
        v, lp, _ = _eval(policy, p, o, a)
        return (-lp.sum() + ((v.flatten() - r) ** 2).sum()) / batch

    def _vmap() -> th.Tensor:
        gs = vmap(grad(loss_i), in_dims=(None, 0, 0, 0))(params, obs, act, ret)
        return sum(x.reshape(batch, -1).square().sum(1) for x in gs.values())

    def naive() -> th.Tensor:
        out = []
        for i in range(batch):
            v, lp, _ = policy.evaluate_actions(obs[i : i + 1], act[i : i + 1])
            loss = (-lp.sum() + ((v.flatten() - ret[i : i + 1]) ** 2).sum()) / batch
            gs = th.autograd.grad(loss, list(policy.parameters()), allow_unused=True)
            out.append(sum(g.square().sum() for g in gs if g is not None))
        return th.stack(out)

    def plain_step() -> None:
        v, lp, _ = policy.evaluate_actions(obs, act)
        loss = (-lp.sum() + ((v.flatten() - ret) ** 2).sum()) / batch
        policy.optimizer.zero_grad()
        loss.backward()

    th.distributions.Distribution.set_default_validate_args(False)
    a, b, c = ours(), _vmap(), naive()
    assert th.allclose(a, b, rtol=1e-4) and th.allclose(a, c, rtol=1e-4), "the three methods disagree"
    out = {}
    for name, fn in (("plain_step", plain_step), ("rledger", ours), ("vmap", _vmap), ("naive", naive)):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    return {
        "rledger_ms": out["rledger"] * 1e3,
        "rledger_over_plain_step": out["rledger"] / out["plain_step"],
        "speedup_vs_vmap": out["vmap"] / out["rledger"],
        "speedup_vs_naive": out["naive"] / out["rledger"],
    }


def _eval(policy, p, o, a):  # noqa: ANN001, ANN202
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(policy, p):
        return policy.evaluate_actions(o[None], a[None])


RSS_CHILD = """
import resource, sys, tempfile, torch
torch.set_num_threads(1)
from rledger import InstrumentedPPO
m = InstrumentedPPO("MlpPolicy", "CartPole-v1", seed=0, ledger=tempfile.mkdtemp() + "/run")
m.learn(int(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss_mb(steps: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(steps)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def bytes_per_sample_row(steps: int) -> float:
    from rledger import InstrumentedPPO, Ledger

    path = Path(tempfile.mkdtemp()) / "run"
    InstrumentedPPO("MlpPolicy", "CartPole-v1", seed=0, ledger=path).learn(steps)
    ledger = Ledger(path)
    rows = len(ledger.samples(columns=["t"]))
    return sum(p.stat().st_size for p in ledger.files("samples")) / rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long", type=int, default=204800)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    th.set_num_threads(1)
    results: dict[str, object] = {}
    results["learn"] = bench_learn(args.steps, args.repeats)
    print("learn():", json.dumps(results["learn"]), flush=True)
    for b in (64, 512):
        results[f"persample_B{b}"] = bench_persample(b)
        print(f"per-sample math B={b}:", json.dumps(results[f"persample_B{b}"]), flush=True)
    results["bytes_per_samples_row"] = bytes_per_sample_row(args.steps)
    print("bytes per samples row:", round(results["bytes_per_samples_row"], 1), flush=True)
    if not args.skip_rss:
        short, long = peak_rss_mb(args.long // 10), peak_rss_mb(args.long)
        results["rss"] = {"short_mb": short, "long_mb": long, "delta_mb": long - short}
        print("peak RSS:", json.dumps(results["rss"]), flush=True)


if __name__ == "__main__":
    main()
