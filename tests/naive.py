"""Independent reference: every per-sample column by one autograd backward per sample, in float64.

Used by the tests only. ``StepTape`` wraps the real optimizer's ``step`` to keep, for every optimizer
step, the parameters before it and the optimizer state after it; ``naive_samples`` then recomputes
each sample's loss terms one by one from the rollout buffer and compares with the ledger.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch as th
from gymnasium import spaces
from stable_baselines3.common import policies as sb3_policies


@dataclass
class StepTape:
    model: Any
    before: list[dict[str, th.Tensor]] = field(default_factory=list)
    after: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    grads: list[dict[str, th.Tensor]] = field(default_factory=list)  # as the step used them (clipped)

    def install(self) -> StepTape:
        opt = self.model.policy.optimizer
        original = opt.step
        names = {id(p): n for n, p in self.model.policy.named_parameters()}

        def step(*args: Any, **kwargs: Any) -> Any:
            # kept on the CPU (a CUDA policy's too), where the reference computes
            self.before.append({n: p.detach().cpu().clone() for n, p in self.model.policy.named_parameters()})
            self.grads.append(
                {
                    n: p.grad.cpu().clone()
                    for n, p in self.model.policy.named_parameters()
                    if p.grad is not None
                }
            )
            out = original(*args, **kwargs)
            snap = {}
            for p, st in opt.state.items():
                snap[names[id(p)]] = {k: (v.cpu().clone() if th.is_tensor(v) else v) for k, v in st.items()}
            self.after.append(snap)
            return out

        opt.step = step  # type: ignore[method-assign]
        return self


def _sample_inputs(model: Any, flat: np.ndarray) -> tuple[Any, th.Tensor]:
    buf = model.rollout_buffer
    obs = buf.observations
    if isinstance(obs, dict):
        o = {k: th.as_tensor(v[flat]) for k, v in obs.items()}
    else:
        o = th.as_tensor(obs[flat])
    act = th.as_tensor(buf.actions[flat])
    if isinstance(model.action_space, spaces.Discrete):
        act = act.long().flatten()
    return o, act


def naive_samples(
    model: Any,
    tape: StepTape,
    samples: pd.DataFrame,
    updates: pd.DataFrame,
    vectors: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Recompute the per-sample columns of rollout 0 (the rollout still in the buffer). ``vectors``:
    append, per optimizer step, its samples' float64 gradients ``s``, ``pg``, ``g`` ``(B, n)`` (the
    trainable parameters flat in ``names`` order) and its clip factor."""
    buf = model.rollout_buffer
    n_steps = buf.buffer_size
    ups = updates[(updates.rollout == 0) & ~updates.stopped_early].reset_index(drop=True)
    policy64 = model.policy_class(
        model.observation_space,
        model.action_space,
        model.lr_schedule,
        use_sde=model.use_sde,
        **model.policy_kwargs,
    )
    policy64.load_state_dict({k: v.cpu() for k, v in model.policy.state_dict().items()})
    policy64 = policy64.double()
    names = [n for n, p in policy64.named_parameters() if p.requires_grad]
    params = dict(policy64.named_parameters())
    opt = model.policy.optimizer
    group = opt.param_groups[0]
    clip_range = float(model.clip_range(model._current_progress_remaining))
    clip_vf = (
        None if model.clip_range_vf is None else float(model.clip_range_vf(model._current_progress_remaining))
    )
    out = []
    with _float64_preprocessing():
        for j, up in ups.iterrows():
            out.append(
                _one_step(
                    model,
                    policy64,
                    names,
                    params,
                    tape,
                    j,
                    up,
                    samples,
                    buf,
                    n_steps,
                    group,
                    clip_range,
                    clip_vf,
                    vectors,
                )
            )
    return pd.concat(out, ignore_index=True)


@contextlib.contextmanager
def _float64_preprocessing():
    """SB3 casts observations to float32; the reference runs SB3's preprocessing, then float64."""
    original = sb3_policies.preprocess_obs

    def preprocess(*args: Any, **kwargs: Any) -> Any:
        return th.utils._pytree.tree_map(lambda x: x.double(), original(*args, **kwargs))

    sb3_policies.preprocess_obs = preprocess
    try:
        yield
    finally:
        sb3_policies.preprocess_obs = original


def _one_step(
    model,
    policy64,
    names,
    params,
    tape,
    j,
    up,
    samples,
    buf,
    n_steps,
    group,
    clip_range,
    clip_vf,
    vectors=None,
):
    """Reference columns of the samples of optimizer step ``j`` (update row ``up``)."""
    out: list[pd.DataFrame] = []
    if True:  # keeps the body's indentation of the per-step loop it came from
        mb = samples[
            (samples.rollout == 0) & (samples.epoch == up.epoch) & (samples.minibatch == up.minibatch)
        ]
        with th.no_grad():
            for n in names:
                params[n].copy_(tape.before[j][n].double())
        flat = mb.env.to_numpy().astype(np.int64) * n_steps + mb.t.to_numpy().astype(np.int64)
        obs, act = _sample_inputs(model, flat)
        # A_i as the loss used it: SB3 normalizes in float32, so the reference does the same
        adv = th.as_tensor(buf.advantages[flat]).flatten()
        if model.normalize_advantage and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        adv = adv.double()
        old_lp = th.as_tensor(buf.log_probs[flat]).double().flatten()
        old_v = th.as_tensor(buf.values[flat]).double().flatten()
        ret = th.as_tensor(buf.returns[flat]).double().flatten()
        bsz = len(flat)
        per: dict[str, list[th.Tensor]] = {k: [] for k in ("s", "pg", "ent", "vf")}
        ratios, clipped = [], []
        for i in range(bsz):
            oi = (
                {k: v[i : i + 1].double() for k, v in obs.items()}
                if isinstance(obs, dict)
                else obs[i : i + 1].double()
            )
            ai = act[i : i + 1] if act.dtype == th.long else act[i : i + 1].double()
            v, lp, ent = policy64.evaluate_actions(oi, ai)
            v, lp = v.flatten()[0], lp.flatten()[0]
            r = th.exp(lp - old_lp[i])
            a = adv[i]
            pg = -th.min(a * r, a * th.clamp(r, 1 - clip_range, 1 + clip_range)) / bsz
            if clip_vf is None:
                vpred = v
            else:
                vpred = old_v[i] + th.clamp(v - old_v[i], -clip_vf, clip_vf)
            vf = model.vf_coef * (ret[i] - vpred) ** 2 / bsz
            h = ent.flatten()[0] if ent is not None else -lp
            en = -model.ent_coef * h / bsz
            flat_grad = lambda y: th.cat(  # noqa: E731
                [
                    (g if g is not None else th.zeros_like(params[n])).reshape(-1)
                    for n, g in zip(
                        names,
                        th.autograd.grad(y, [params[n] for n in names], retain_graph=True, allow_unused=True),
                        strict=True,
                    )
                ]
            )
            per["s"].append(flat_grad(lp))
            per["pg"].append(flat_grad(pg))
            per["ent"].append(flat_grad(en) if model.ent_coef != 0 else th.zeros_like(per["s"][-1]))
            per["vf"].append(flat_grad(vf))
            ratios.append(r.detach())
            clipped.append(bool((a > 0 and r > 1 + clip_range) or (a < 0 and r < 1 - clip_range)))
        s = th.stack(per["s"])
        gpg, gen, gvf = th.stack(per["pg"]), th.stack(per["ent"]), th.stack(per["vf"])
        g = gpg + gen + gvf
        total = g.sum(0)
        grad_norm = total.norm()
        clip_coef = min(1.0, model.max_grad_norm / (float(grad_norm) + 1e-6))
        # the step's per-coordinate scale: Adam's fresh-gradient factor, from the state the step
        # left, or plain SGD's learning rate (the step's own, as the updates table has it)
        st = tape.after[j]
        pieces = []
        for n in names:
            p = params[n]
            if isinstance(model.policy.optimizer, th.optim.SGD):
                pieces.append(th.full((p.numel(),), float(up.lr), dtype=th.float64))
                continue
            if n not in st:
                pieces.append(th.zeros(p.numel(), dtype=th.float64))
                continue
            k = float(st[n]["step"])
            b1, b2 = group["betas"]
            denom = st[n]["exp_avg_sq"].double().sqrt() / math.sqrt(1 - b2**k) + group["eps"]
            pieces.append((float(up.lr) * (1 - b1) / (1 - b1**k) / denom).reshape(-1))
        pfac = th.cat(pieces)
        if vectors is not None:
            vectors.append({"names": names, "s": s, "pg": gpg, "g": g, "clip_coef": clip_coef, "pfac": pfac})
        out.append(
            pd.DataFrame(
                {
                    "epoch": up.epoch,
                    "minibatch": up.minibatch,
                    "t": mb.t.to_numpy(),
                    "env": mb.env.to_numpy(),
                    "advantage_used": adv.numpy(),
                    "ratio": th.stack(ratios).numpy(),
                    "clipped": clipped,
                    "score_norm": s.norm(dim=1).numpy(),
                    "pg_grad_norm": gpg.norm(dim=1).numpy(),
                    "entropy_grad_norm": gen.norm(dim=1).numpy(),
                    "value_grad_norm": gvf.norm(dim=1).numpy(),
                    "loss_grad_norm": g.norm(dim=1).numpy(),
                    "adam_update_norm": (clip_coef * (g * pfac).norm(dim=1)).numpy(),
                    "pg_adam_update_norm": (clip_coef * (gpg * pfac).norm(dim=1)).numpy(),
                    "entropy_adam_update_norm": (clip_coef * (gen * pfac).norm(dim=1)).numpy(),
                    "value_adam_update_norm": (clip_coef * (gvf * pfac).norm(dim=1)).numpy(),
                    "score_step_norm": (clip_coef * (s * pfac).norm(dim=1)).numpy(),  # reference only
                    "self_reinforcement": (s * (-clip_coef * pfac * gpg)).sum(1).numpy(),
                    "grad_norm": float(grad_norm),
                    "clip_coef": clip_coef,
                }
            )
        )
        return out[0]
    return out[0]
