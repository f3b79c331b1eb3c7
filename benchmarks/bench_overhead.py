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
  5. With both cores busy: the default's wall ratio while another process spins on the second core
     (as with `rledger run --workers 2`, where the background thread cannot hide on an idle core).
  6. With the new instruments on: the momentum table and 20 watched pairs (influence tables).
     Target <= 1.25 wall. Bytes on disk per row of the momentum, influence and influence_steps
     tables, and the momentum attribution's peak buffer.
  7. SB3's CnnPolicy (NatureCNN) on 84x84x4 frames at the zoo's Atari settings, both cores for
     torch: learn() wall and CPU ratios. Target <= 1.5 wall.
  8. Its per-sample math for one minibatch of 256: rledger's conv path against torch.func vmap and
     against Opacus-style materialized per-sample gradients (the three checked to agree).

The headline (last lines) prints the defaults' wall ratio, the CPU-time ratio (all threads; target
<= 1.10), the ratio with both cores busy and the ratio with the new instruments on.

Usage: python benchmarks/bench_overhead.py [--steps 20480] [--repeats 7] [--long 204800] [--skip-rss]
       [--cnn-only] [--cnn-steps 4096] [--cnn-repeats 3]
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


def watched_pairs(n_states: int = 10) -> list[tuple[np.ndarray, int]]:
    """20 watched pairs on CartPole: 10 fixed observations near the upright state, both actions."""
    obs = np.random.default_rng(0).normal(scale=0.1, size=(n_states, 4)).astype(np.float32)
    return [(o, a) for o in obs for a in (0, 1)]


NEW_INSTRUMENTS: dict[str, object] = {
    "record": ("transitions", "samples", "updates", "episodes", "momentum"),
    "watch": watched_pairs(),
}


def time_learn(
    cls_name: str, steps: int, seed: int, background: bool = True, extra: dict[str, object] | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of one learn() call."""
    from stable_baselines3 import PPO

    from rledger import InstrumentedPPO

    kwargs: dict[str, object] = {}
    if cls_name == "rledger":
        cls = InstrumentedPPO
        kwargs["ledger"] = tempfile.mkdtemp() + "/run"
        kwargs["background"] = background
        kwargs.update(extra or {})
    else:
        cls = PPO
    model = cls("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", **kwargs)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_learn(
    steps: int, repeats: int, background: bool, extra: dict[str, object] | None = None
) -> dict[str, float]:
    plain, inst = [], []
    for r in range(repeats):
        order = ("sb3", "rledger") if r % 2 == 0 else ("rledger", "sb3")
        for name in order:
            (plain if name == "sb3" else inst).append(time_learn(name, steps, r, background, extra))
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


# ---------------------------------------------------------------- image observations (CnnPolicy)
ATARI_PPO = dict(n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4, clip_range=0.1, ent_coef=0.01)
"""rl-baselines3-zoo's PPO hyperparameters for Atari (with 8 envs), which SB3's CnnPolicy is used with."""


def image_env(n_envs: int = 8):  # noqa: ANN201
    """CartPole drawn into 84x84 uint8 frames (each of its 4 numbers a band of brightness), 4 stacked:
    NatureCNN's input size, from an env that costs next to nothing to step."""
    import gymnasium as gym
    from gymnasium import spaces
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    class Frames(gym.ObservationWrapper):
        def __init__(self, env: gym.Env):
            super().__init__(env)
            self.observation_space = spaces.Box(0, 255, (84, 84, 1), np.uint8)

        def observation(self, obs: np.ndarray) -> np.ndarray:
            level = np.clip((np.tanh(obs) + 1) * 127.5, 0, 255).astype(np.uint8)
            return np.repeat(level, 21)[:, None, None].repeat(84, axis=1)

    return VecFrameStack(make_vec_env("CartPole-v1", n_envs=n_envs, seed=0, wrapper_class=Frames), 4)


def time_learn_cnn(cls_name: str, steps: int, seed: int) -> tuple[float, float]:
    from stable_baselines3 import PPO

    from rledger import InstrumentedPPO

    kwargs: dict[str, object] = dict(ATARI_PPO)
    cls = PPO
    if cls_name == "rledger":
        cls, kwargs["ledger"] = InstrumentedPPO, tempfile.mkdtemp() + "/run"
    model = cls("CnnPolicy", image_env(), seed=seed, device="cpu", **kwargs)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_cnn_learn(steps: int, repeats: int) -> dict[str, float]:
    """learn() with SB3's CnnPolicy (NatureCNN) on 84x84x4 frames, zoo Atari settings, interleaved
    runs; wall and CPU ratios of the medians."""
    plain, inst = [], []
    for r in range(repeats):
        for name in ("sb3", "rledger") if r % 2 == 0 else ("rledger", "sb3"):
            (plain if name == "sb3" else inst).append(time_learn_cnn(name, steps, r))
    return {
        "ppo_s": statistics.median(w for w, _ in plain),
        "instrumented_s": statistics.median(w for w, _ in inst),
        "ratio": statistics.median(w for w, _ in inst) / statistics.median(w for w, _ in plain),
        "pair_ratios": [b[0] / a[0] for a, b in zip(plain, inst, strict=True)],
        "cpu_ratio": statistics.median(c for _, c in inst) / statistics.median(c for _, c in plain),
    }


def bench_cnn_persample(batch: int = 256, repeats: int = 5) -> dict[str, float]:
    """One minibatch's per-sample Gram matrices (log pi, entropy, value; plain and Adam-scaled) on
    NatureCNN, 84x84x4, three ways that give the same numbers (checked here): rledger's conv path
    (output gradients from the live graph, per-sample convolution-weight gradients in chunks, the
    Linear layers' Gram identities), torch.func vmap(jacrev) over samples (rledger's generic path),
    and Opacus-style (the same output gradients, then every layer's per-sample gradient materialized
    from unfolded activations with einsum, as Opacus's grad samplers do). Beside them, one plain
    PPO update (forward, backward, Adam step) of the same minibatch."""
    from stable_baselines3 import PPO
    from torch.nn import functional as tf

    from rledger.persample.checks import layer_modules
    from rledger.persample.functional import jacobian_gram
    from rledger.persample.gram import LayerCapture, linear_gram, output_grads, supports

    model = PPO("CnnPolicy", image_env(1), seed=0, device="cpu", **ATARI_PPO)
    policy = model.policy
    gen = th.Generator().manual_seed(0)
    obs = th.randint(0, 256, (batch, 4, 84, 84), generator=gen).float()
    act = th.randint(0, 2, (batch,), generator=gen)
    layers = layer_modules(policy)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    fac = {}
    for n, p in policy.named_parameters():  # an Adam-like step scale: a positive random per coordinate
        f = th.rand(p.shape, generator=gen) * 1e-3 + 1e-4
        fac[n] = (f[None], f.square()[None])

    def plain() -> None:
        v, lp, ent = policy.evaluate_actions(obs, act)
        loss = -(lp * th.randn(batch, generator=gen)).mean() + 0.5 * v.square().mean() - 0.01 * ent.mean()
        policy.optimizer.zero_grad()
        loss.backward()
        policy.optimizer.step()

    def captured() -> tuple[list, list]:  # noqa: ANN202  the live graph's layer calls and output grads
        with LayerCapture(layers) as cap:
            v, lp, ent = policy.evaluate_actions(obs, act)
        parts = [lp, ent, v.flatten()]
        calls = cap.take()
        return calls, output_grads(parts, calls, supports(parts, calls))

    def ours():  # noqa: ANN202
        calls, d = captured()
        lay = [(c.name, c.module, set(dj)) for c, dj in zip(calls, d, strict=True)]
        return linear_gram(
            lay,
            [c.inputs[None] for c in calls],
            [{f: g[None] for f, g in dj.items()} for dj in d],
            {},
            fac,
            3,
        )

    def opacus_style():  # noqa: ANN202
        calls, d = captured()
        g1, gp2 = th.zeros(batch, 3, 3), th.zeros(batch, 3, 3)
        for c, dj in zip(calls, d, strict=True):
            m, parts = c.module, sorted(dj)
            per = {}
            for f in parts:
                if isinstance(m, th.nn.Conv2d):
                    u = tf.unfold(c.inputs, m.kernel_size, m.dilation, m.padding, m.stride)
                    gw = th.einsum("noq,npq->nop", dj[f].flatten(2), u)
                    gb = dj[f].flatten(2).sum(-1)
                else:
                    gw, gb = th.einsum("no,np->nop", dj[f], c.inputs), dj[f]
                per[f] = th.cat([gw.flatten(1), gb], 1)
            fw = th.cat([fac[f"{c.name}.weight"][0].flatten(), fac[f"{c.name}.bias"][0].flatten()])
            for x, f in enumerate(parts):
                for h in parts[x:]:
                    g1[:, f, h] += (per[f] * per[h]).sum(1)
                    gp2[:, f, h] += (per[f] * fw.square() * per[h]).sum(1)
        return g1 + th.triu(g1, 1).transpose(1, 2), gp2 + th.triu(gp2, 1).transpose(1, 2)

    def with_vmap():  # noqa: ANN202
        params = {n: p for n, p in policy.named_parameters() if n in names}
        return jacobian_gram(policy, params, obs, act, 3, {n: fac[n][0][0] for n in names})

    a, b, c = ours(), opacus_style(), with_vmap()
    for ref in (b[0], c.g1[0]):  # the three ways agree
        assert th.allclose(a.g1[0], ref, rtol=1e-3, atol=1e-6 * float(ref.abs().max())), "g1 differs"
    assert th.allclose(a.gp2[0], b[1], rtol=1e-3, atol=1e-6 * float(b[1].abs().max())), "gp2 differs"
    times = {}
    for name, fn in (("plain", plain), ("rledger", ours), ("opacus", opacus_style), ("vmap", with_vmap)):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats if name != "vmap" else max(1, repeats // 2)):
            fn()
        times[name] = (time.perf_counter() - t0) / (repeats if name != "vmap" else max(1, repeats // 2))
    return {
        "batch": batch,
        "plain_update_ms": times["plain"] * 1e3,
        "rledger_ms": times["rledger"] * 1e3,
        "rledger_over_plain_update": times["rledger"] / times["plain"],
        "speedup_vs_vmap": times["vmap"] / times["rledger"],
        "speedup_vs_opacus_style": times["opacus"] / times["rledger"],
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


def new_table_sizes(steps: int) -> dict[str, float]:
    """Bytes on disk per row of the new tables, and the momentum attribution's peak buffer (MB)."""
    from rledger import InstrumentedPPO, Ledger

    path = Path(tempfile.mkdtemp()) / "run"
    model = InstrumentedPPO("MlpPolicy", "CartPole-v1", seed=0, ledger=path, **NEW_INSTRUMENTS)  # type: ignore[arg-type]
    model.learn(steps)
    tracker = model._recorder.engine.momentum
    ledger = Ledger(path)
    out: dict[str, float] = {
        "momentum_buffer_peak_mb": tracker.bytes_held / 2**20,
        "horizon": tracker.horizon,
    }
    for table in ("samples", "momentum", "influence", "influence_steps"):
        files = ledger.files(table)
        rows = sum(__import__("pyarrow.parquet").parquet.read_metadata(f).num_rows for f in files)
        out[f"{table}_bytes_per_row"] = sum(f.stat().st_size for f in files) / rows
        out[f"{table}_rows"] = rows
    return out


class BusyCore:
    """Another process spinning on one core for the duration of a ``with`` block."""

    def __enter__(self) -> BusyCore:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--long", type=int, default=204800)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--cnn-only", action="store_true", help="only the CnnPolicy measurements (7, 8)")
    ap.add_argument("--cnn-steps", type=int, default=4096)
    ap.add_argument("--cnn-repeats", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, object] = {}
    # CnnPolicy: torch's default threads (both cores), as image-policy users run it
    results["cnn_persample"] = bench_cnn_persample()
    print("CnnPolicy per-sample math, B=256:", json.dumps(results["cnn_persample"]), flush=True)
    results["cnn_learn"] = bench_cnn_learn(args.cnn_steps, args.cnn_repeats)
    print("CnnPolicy learn():", json.dumps(results["cnn_learn"]), flush=True)
    cnn = results["cnn_learn"]
    if args.cnn_only:
        print(
            f"\n  CnnPolicy 84x84x4, wall {cnn['ratio']:.3f}x  CPU {cnn['cpu_ratio']:.3f}x  (target <= 1.5)"
        )  # type: ignore[index]
        return
    th.set_num_threads(1)
    results["learn"] = bench_learn(args.steps, args.repeats, background=True)
    print("learn(), background thread (default):", json.dumps(results["learn"]), flush=True)
    results["learn_in_train"] = bench_learn(args.steps, args.repeats, background=False)
    print("learn(), background=False:", json.dumps(results["learn_in_train"]), flush=True)
    for b in (64, 512):
        results[f"persample_B{b}"] = bench_persample(b)
        print(f"per-sample math B={b}:", json.dumps(results[f"persample_B{b}"]), flush=True)
    results["bytes_per_samples_row"] = bytes_per_sample_row(args.steps)
    print("bytes per samples row:", round(results["bytes_per_samples_row"], 1), flush=True)
    with BusyCore():
        results["learn_busy"] = bench_learn(args.steps, args.repeats, background=True)
    print("learn(), both cores busy:", json.dumps(results["learn_busy"]), flush=True)
    results["learn_new"] = bench_learn(args.steps, args.repeats, background=True, extra=NEW_INSTRUMENTS)
    print("learn(), momentum + 20 watched pairs:", json.dumps(results["learn_new"]), flush=True)
    results["new_tables"] = new_table_sizes(args.steps)
    print("new tables:", json.dumps(results["new_tables"]), flush=True)
    if not args.skip_rss:
        short, long = peak_rss_mb(args.long // 10), peak_rss_mb(args.long)
        results["rss"] = {"short_mb": short, "long_mb": long, "delta_mb": long - short}
        print("peak RSS:", json.dumps(results["rss"]), flush=True)
    learn = results["learn"]
    print("\nheadline (InstrumentedPPO / PPO, CartPole-v1, SB3 defaults, medians):")
    print(f"  defaults, wall      {learn['ratio']:.3f}x  95% CI {learn['ratio_ci95']}  (target <= 1.08)")  # type: ignore[index]
    print(f"  defaults, CPU time  {learn['cpu_ratio']:.3f}x  (all threads; target <= 1.10)")  # type: ignore[index]
    busy = results["learn_busy"]
    print(f"  both cores busy     {busy['ratio']:.3f}x  95% CI {busy['ratio_ci95']}")  # type: ignore[index]
    new = results["learn_new"]
    print(
        f"  momentum + 20 pairs {new['ratio']:.3f}x  95% CI {new['ratio_ci95']}  CPU {new['cpu_ratio']:.3f}x  (target <= 1.25)"
    )  # type: ignore[index]
    print(f"  CnnPolicy 84x84x4   {cnn['ratio']:.3f}x  CPU {cnn['cpu_ratio']:.3f}x  (target <= 1.5)")  # type: ignore[index]


if __name__ == "__main__":
    main()
