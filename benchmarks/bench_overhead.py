"""Speed and memory of InstrumentedPPO against plain SB3 PPO, measured in the same run.

Prints ratios, not absolute targets (machines are noisy):
  1. learn() wall time, InstrumentedPPO (every table and column) / PPO, CartPole-v1, SB3 defaults,
     1 torch thread; runs interleaved (A B B A ...), median of --repeats. Target <= 1.08. Printed for
     the default (per-sample columns and ledger writes in a background thread) and for
     background=False (all of it inside train()), with the CPU time ratio (all threads), which says
     how much work recording adds whatever the thread it runs on.
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

import numpy as np
import torch as th


def time_learn(cls_name: str, steps: int, seed: int, background: bool = True) -> tuple[float, float]:
    """(wall, CPU) seconds of one learn() call."""
    from stable_baselines3 import PPO

    from rledger import InstrumentedPPO

    kwargs: dict[str, object] = {}
    if cls_name == "rledger":
        cls = InstrumentedPPO
        kwargs["ledger"] = tempfile.mkdtemp() + "/run"
        kwargs["background"] = background
    else:
        cls = PPO
    model = cls("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", **kwargs)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_learn(steps: int, repeats: int, background: bool) -> dict[str, float]:
    plain, inst = [], []
    for r in range(repeats):
        order = ("sb3", "rledger") if r % 2 == 0 else ("rledger", "sb3")
        for name in order:
            (plain if name == "sb3" else inst).append(time_learn(name, steps, r, background))
    p, i = statistics.median(w for w, _ in plain), statistics.median(w for w, _ in inst)
    pairs = [b[0] / a[0] for a, b in zip(plain, inst, strict=True)]
    # 95% percentile-bootstrap interval of the ratio of medians, resampling the interleaved pairs
    rng = np.random.default_rng(0)
    walls = np.array([[a[0], b[0]] for a, b in zip(plain, inst, strict=True)])
    boot = [
        np.median(walls[idx, 1]) / np.median(walls[idx, 0])
        for idx in rng.integers(0, len(walls), size=(2000, len(walls)))
    ]
    return {
        "ppo_s": p,
        "instrumented_s": i,
        "ratio": i / p,
        "ratio_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "pair_ratio_min": min(pairs),
        "pair_ratio_max": max(pairs),
        "cpu_ratio": statistics.median(c for _, c in inst) / statistics.median(c for _, c in plain),
    }


def bench_persample(batch: int, steps: int = 40) -> dict[str, float]:
    """Cost per minibatch of one PPO update with per-sample columns, CartPole default policy.

    plain: forward, loss, backward, clip, Adam step (what SB3 does). rledger: the same plus
    PerSampleEngine (slot buffers, columns of all steps computed in one batch at the end).
    vmap / naive: the same plus per-sample loss gradients and their norms from torch.func
    vmap(grad) / a per-sample autograd loop (without the Adam preconditioner, so they do less).
    """
    from stable_baselines3 import PPO
    from torch.func import grad, vmap

    from rledger.persample import LossTerms, PerSampleEngine

    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    policy = model.policy
    engine = PerSampleEngine(policy, policy.optimizer, model.action_space)
    gen = th.Generator().manual_seed(0)
    obs = th.randn(batch, 4, generator=gen)
    act = th.randint(0, 2, (batch,), generator=gen)
    ret = th.randn(batch, generator=gen)
    adv = th.randn(batch, generator=gen)
    # old log-probs a little off the current ones: about 7% of the samples are clipped, as in training
    noise = 0.1 * th.randn(batch, generator=gen)
    old_v = th.zeros(batch)

    def loss_terms(v, lp):  # noqa: ANN001, ANN202
        r = th.exp(lp - (lp.detach() + noise))
        pl = -th.min(adv * r, adv * th.clamp(r, 0.8, 1.2)).mean()
        vl = th.nn.functional.mse_loss(ret, v)
        return pl + 0.5 * vl, r

    def step(loss):  # noqa: ANN001, ANN202
        policy.optimizer.zero_grad()
        loss.backward()
        gn = th.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        policy.optimizer.step()
        return gn

    def plain() -> None:
        v, lp, _ = policy.evaluate_actions(obs, act)
        loss, _ = loss_terms(v.flatten(), lp)
        step(loss)

    def ours() -> None:
        v, lp, ent = policy.evaluate_actions(obs, act)
        v = v.flatten()
        loss, r = loss_terms(v, lp)
        terms = LossTerms(adv, r, 0.2, v, old_v, ret, None, 0.0, 0.5)
        pending = engine.before_step(obs, act, lp, ent, v, terms)
        gn = step(loss)
        engine.after_step(pending, gn, dict(rollout=0, epoch=0, minibatch=0, t=rows, env=zeros))

    params = {n: p.detach() for n, p in policy.named_parameters()}
    rows, zeros = np.arange(batch, dtype=np.int32), np.zeros(batch, dtype=np.int16)
    engine.start(lambda t_env: (obs[t_env[:, 0]], act[t_env[:, 0]]), steps, max_grad_norm=0.5)

    def loss_i(p, o, a, r_, ad, ns):  # noqa: ANN001, ANN202
        from torch.nn.utils.stateless import _reparametrize_module

        with _reparametrize_module(policy, p):
            v, lp, _ = policy.evaluate_actions(o[None], a[None])
        ratio = th.exp(lp - (lp.detach() + ns))
        pl = -th.min(ad * ratio, ad * th.clamp(ratio, 0.8, 1.2)).sum() / batch
        return pl + 0.5 * ((v.flatten() - r_) ** 2).sum() / batch

    def with_vmap() -> None:
        gs = vmap(grad(loss_i), in_dims=(None, 0, 0, 0, 0, 0))(params, obs, act, ret, adv, noise)
        sum(x.reshape(batch, -1).square().sum(1) for x in gs.values()).sqrt()
        plain()

    def naive() -> None:
        out = []
        for i in range(batch):
            v, lp, _ = policy.evaluate_actions(obs[i : i + 1], act[i : i + 1])
            r = th.exp(lp - (lp.detach() + noise[i]))
            pl = -th.min(adv[i] * r, adv[i] * th.clamp(r, 0.8, 1.2)).sum() / batch
            li = pl + 0.5 * ((v.flatten() - ret[i]) ** 2).sum() / batch
            gs = th.autograd.grad(li, list(policy.parameters()), allow_unused=True)
            out.append(sum(g.square().sum() for g in gs if g is not None).sqrt())
        plain()

    th.distributions.Distribution.set_default_validate_args(False)
    times = {}
    for name, fn in (("plain", plain), ("rledger", ours), ("vmap", with_vmap), ("naive", naive)):
        n = steps if name != "naive" else max(2, steps // 10)
        fn()
        engine.finish()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        engine.finish()
        times[name] = (time.perf_counter() - t0) / n
    return {
        "plain_ms": times["plain"] * 1e3,
        "rledger_ms": times["rledger"] * 1e3,
        "rledger_over_plain": times["rledger"] / times["plain"],
        "speedup_vs_vmap": times["vmap"] / times["rledger"],
        "speedup_vs_naive": times["naive"] / times["rledger"],
    }


# The child's own peak: on Linux VmHWM of /proc/self/status. Not ru_maxrss, which Linux carries over
# from the parent's memory at fork/exec: it printed this benchmark's own peak (~0.9-1.1 GB) for both
# runs until it was noticed.
RSS_CHILD = """
import resource, sys, tempfile, torch
torch.set_num_threads(1)
from rledger import InstrumentedPPO
m = InstrumentedPPO("MlpPolicy", "CartPole-v1", seed=0, ledger=tempfile.mkdtemp() + "/run")
m.learn(int(sys.argv[1]))
try:
    with open("/proc/self/status") as fh:
        print(next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")) / 1024)
except OSError:
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
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--long", type=int, default=204800)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    th.set_num_threads(1)
    results: dict[str, object] = {}
    results["learn"] = bench_learn(args.steps, args.repeats, background=True)
    print("learn(), background thread (default):", json.dumps(results["learn"]), flush=True)
    results["learn_in_train"] = bench_learn(args.steps, args.repeats, background=False)
    print("learn(), background=False:", json.dumps(results["learn_in_train"]), flush=True)
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
