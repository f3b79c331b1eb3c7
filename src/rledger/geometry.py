"""Per-sample columns of the `samples` table for an SB3 actor-critic policy.

Glue between SB3's policy/optimizer and the pure tensor math of :mod:`rledger.persample`. For each
minibatch, :meth:`SampleGeometry.before_step` runs while the loss graph is alive (coefficients of each
part and, on the fast path, output gradients of the Linear layers), and :meth:`after_step` reads the
optimizer state that the step produced and returns the per-sample columns.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from rledger import persample

_REFUSED_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.RNNBase, nn.GroupNorm)


class UnsupportedPolicyError(ValueError):
    """The policy or optimizer cannot be instrumented exactly."""


@dataclass
class _Pending:
    """What :meth:`SampleGeometry.before_step` keeps for :meth:`SampleGeometry.after_step`."""

    coef: Tensor  # (B, K): per-sample coefficient of each part in the loss
    alpha: Tensor  # (B,): coefficient of log pi in the policy loss alone
    ent_coef_logp: Tensor | None  # (B,): coefficient of log pi in the entropy loss (no analytic entropy)
    ent_part: int | None
    calls: list[persample.LinearCall] | None = None
    d: list[dict[int, Tensor]] | None = None
    direct: dict[int, Tensor] | None = None  # per-sample log_std gradients (fast path, Gaussian)
    params_before: dict[str, Tensor] | None = None  # generic path
    inputs: Any = None
    # reuse path: cotangents of the Linear outputs captured from the training backward itself
    d_loss: dict[int, Tensor] | None = None
    layer_part: list[int | None] | None = None
    params_list: list[Tensor] | None = None  # parameters before the step (score of clipped samples)


@dataclass
class LossTerms:
    """The per-sample inputs of SB3's PPO loss for one minibatch (all ``(B,)`` tensors)."""

    advantages: Tensor  # as used (normalized or not)
    ratio: Tensor
    clip_range: float
    values: Tensor  # current V(s), flattened
    old_values: Tensor
    returns: Tensor
    clip_range_vf: float | None
    ent_coef: float
    vf_coef: float


def loss_coefficients(
    terms: LossTerms, has_entropy: bool
) -> tuple[Tensor, Tensor, int | None, Tensor | None]:
    """Per-sample coefficients of the loss parts: ``d loss / d f_i`` for f in (log pi, [H], V).

    Closed forms of the derivatives autograd takes through SB3's loss: the clipped surrogate
    ``-mean(min(A r, A clamp(r)))`` gives ``-A r / B`` unless clipping is active (then 0; at the exact
    clip bound ``min`` ties and ``clamp`` passes the gradient, so the sample is not clipped); the value
    loss ``vf_coef * mean((R - V_pred)^2)`` gives ``2 vf_coef (V_pred - R) / B``, times 0 where
    ``clip_range_vf`` clamps; the entropy loss ``-ent_coef * mean(H)`` gives ``-ent_coef / B`` (or
    ``+ent_coef / B`` on log pi when the distribution has no analytic entropy).
    Returns (coef ``(B, K)``, alpha ``(B,)``, index of the entropy part or None, entropy-on-log-pi
    coefficient or None).
    """
    a, r = terms.advantages.detach(), terms.ratio.detach()
    batch = a.shape[0]
    clamped = th.clamp(r, 1 - terms.clip_range, 1 + terms.clip_range)
    clipped = ((a > 0) & (r > clamped)) | ((a < 0) & (r < clamped))
    alpha = th.where(clipped, th.zeros_like(r), -(a * r) / batch)
    v = terms.values.detach()
    if terms.clip_range_vf is None:
        v_pred = v
        vmask = None
    else:
        diff = v - terms.old_values
        v_pred = terms.old_values + th.clamp(diff, -terms.clip_range_vf, terms.clip_range_vf)
        vmask = (diff >= -terms.clip_range_vf) & (diff <= terms.clip_range_vf)
    beta = (2.0 * terms.vf_coef / batch) * (v_pred - terms.returns)
    if vmask is not None:
        beta = th.where(vmask, beta, th.zeros_like(beta))
    coefs = [alpha]
    ent_part, ent_logp = None, None
    if terms.ent_coef != 0:
        if has_entropy:
            ent_part = 1
            coefs.append(th.full_like(alpha, -terms.ent_coef / batch))
        else:
            ent_logp = th.full_like(alpha, terms.ent_coef / batch)
            coefs[0] = alpha + ent_logp
    coefs.append(beta)
    return th.stack(coefs, 1), alpha, ent_part, ent_logp


class SampleGeometry:
    """Computes the per-sample gradient columns for one SB3 ``ActorCriticPolicy``.

    ``path`` is ``"linear"`` (every trainable parameter lives in an ``nn.Linear`` called once per
    forward, plus a Gaussian ``log_std``) or ``"generic"`` (``torch.func`` per-sample Jacobians).
    """

    def __init__(self, policy: ActorCriticPolicy, optimizer: th.optim.Optimizer, action_space: spaces.Space):
        self.policy = policy
        self.action_space = action_space
        check_policy(policy)
        check_optimizer(optimizer)
        self.linears = persample.linear_modules(policy)
        self.gaussian = type(policy.action_dist) is DiagGaussianDistribution
        self.path = self._choose_path()
        self._support: list[set[int]] | None = None
        self.reuse_enabled = True
        self._reuse = False
        self._layer_part: list[int | None] = []
        # batched fast path: queue of recorded steps, flat layout of the optimizer's parameters
        self.max_queued_elements = 1 << 25
        self._queue: list[Any] = []
        self._queued_elems = 0
        self._done: list[dict[str, Any]] = []
        self._adam = isinstance(optimizer, th.optim.Adam | th.optim.AdamW)
        self._group = optimizer.param_groups[0]
        self._opt_params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self._offsets: dict[int, tuple[int, int]] = {}
        pos = 0
        for p in self._opt_params:
            self._offsets[id(p)] = (pos, pos + p.numel())
            pos += p.numel()
        self._opt_detached = [p.detach() for p in self._opt_params]
        self._steps_checked = False
        names = {id(p): n for n, p in policy.named_parameters()}
        self._opt_names = [names[id(p)] for p in self._opt_params]
        self._n_out = sum(m.out_features for m in self.linears.values()) + (
            int(policy.log_std.numel()) if self.gaussian else 0  # type: ignore[attr-defined]
        )

    # ------------------------------------------------------------------ setup
    def _choose_path(self) -> str:
        outside = persample.params_outside(self.policy, self.linears.values())
        allowed = {"log_std"} if self.gaussian else set()
        if set(outside) - allowed:
            return "generic"
        obs, act = self._dummy_batch(2)
        with persample.LinearCapture(self.linears) as cap, th.no_grad():
            self.policy.evaluate_actions(obs, act)
        names = [c.name for c in cap.calls]
        if len(names) != len(set(names)) or any(c.inputs.dim() != 2 for c in cap.calls):
            return "generic"
        return "linear"

    def _dummy_batch(self, n: int) -> tuple[Any, Tensor]:
        space = self.policy.observation_space
        if isinstance(space, spaces.Dict):
            obs_np: Any = {k: np.zeros((n, *s.shape), dtype=s.dtype) for k, s in space.spaces.items()}
        else:
            obs_np = np.zeros((n, *space.shape), dtype=space.dtype)
        obs, _ = self.policy.obs_to_tensor(obs_np)
        if isinstance(self.action_space, spaces.Discrete):
            act = th.zeros(n, dtype=th.long, device=self.policy.device)
        else:
            act = th.zeros((n, *self.action_space.shape), dtype=th.float32, device=self.policy.device)
            if isinstance(self.action_space, spaces.MultiDiscrete | spaces.MultiBinary):
                act = act.reshape(n, -1)
        return obs, act

    def validate(self) -> None:
        """Run the generic path once on a dummy batch so that a policy it cannot handle fails now."""
        if self.path != "generic":
            return
        obs, act = self._dummy_batch(2)
        try:
            self._jacobian_gram(self._params_now(), (obs, act), 2, 2, None)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise UnsupportedPolicyError(
                f"rledger cannot compute exact per-sample gradients of {type(self.policy).__name__} "
                f"(generic torch.func path failed: {type(exc).__name__}: {exc}). Use a feed-forward "
                "policy without data-dependent control flow, or record=('transitions', 'updates', 'episodes')."
            ) from exc

    # ------------------------------------------------------------------ per minibatch
    @contextlib.contextmanager
    def capture(self) -> Iterator[persample.LinearCapture | None]:
        """Wrap the minibatch's forward pass (hooks only on the fast path, removed on exit)."""
        if self.path == "linear":
            with persample.LinearCapture(self.linears) as cap:
                yield cap
        else:
            yield None

    def before_step(
        self,
        cap: persample.LinearCapture | None,
        obs: Any,
        actions: Tensor,
        log_prob: Tensor,
        entropy: Tensor | None,
        values: Tensor,
        terms: LossTerms,
    ) -> _Pending:
        """Per-sample loss coefficients and, on the fast path, Linear output gradients.

        Must run before ``loss.backward()`` frees the graph. Touches no ``.grad`` and no RNG.
        """
        coef, alpha, ent_part, ent_coef_logp = loss_coefficients(terms, entropy is not None)
        parts: list[Tensor] = [log_prob]
        if ent_part is not None:
            parts.append(entropy)  # type: ignore[arg-type]
        parts.append(values)
        pending = _Pending(coef, alpha, ent_coef_logp, ent_part)
        if self.path == "linear":
            assert cap is not None
            calls = cap.calls
            if self._support is None:
                self._support = persample.supports(parts, calls)
                per_layer = [
                    [f for f, sup in enumerate(self._support) if j in sup] for j in range(len(calls))
                ]
                # the training backward alone suffices when no layer mixes two parts
                self._reuse = (
                    self.reuse_enabled and ent_coef_logp is None and all(len(x) <= 1 for x in per_layer)
                )
                self._layer_part = [x[0] if x else None for x in per_layer]
            pending.calls = calls
            if self._reuse:
                pending.d_loss = {}
                pending.layer_part = self._layer_part
                for j, call in enumerate(calls):
                    if call.output is not None and self._layer_part[j] is not None:
                        call.output.register_hook(_keep_grad(pending.d_loss, j))
                if bool((alpha == 0).any()):  # clipped samples: their score needs the pre-step parameters
                    pending.params_list = th._foreach_mul(self._opt_detached, 1.0)
                    pending.inputs = (obs, actions)
            else:
                pending.d = persample.output_grads(parts, calls, self._support)
                for call in calls:  # do not keep the minibatch's autograd graph alive in the queue
                    call.output = None
            if self.gaussian:
                dist = self.policy.action_dist.distribution
                z = ((actions - dist.loc) / dist.scale).detach()
                direct = {0: z.square() - 1.0}
                if ent_part is not None:
                    direct[ent_part] = th.ones_like(z)
                pending.direct = direct
        else:
            pending.params_before = {
                n: p.detach().clone() for n, p in persample.trainable(self.policy).items()
            }
            pending.inputs = (obs, actions)
        return pending

    def record(
        self,
        pending: _Pending,
        optimizer: th.optim.Optimizer,
        clip_coef: Tensor,
        base: dict[str, Any],
    ) -> None:
        """Queue one optimizer step's samples; columns are computed in batches by :meth:`finish`.

        ``base`` holds the minibatch's own columns (keys, advantage_used, ratio, clipped). On the fast
        path only the optimizer's second moments are copied here; the Gram matrices of many
        minibatches are then computed together with batched matmuls.
        """
        for call in pending.calls or ():
            call.output = None  # the training backward has run: release the graph
        snap = self._snapshot(optimizer) if self.path == "linear" else None
        if snap is None and pending.d_loss is not None:
            raise UnsupportedPolicyError(
                "optimizer state is not batchable (several parameter groups or unequal Adam steps); "
                "set SampleGeometry.reuse_enabled = False"
            )
        if snap is None:
            precond = _fresh_step_factor(optimizer)
            cols = self._columns_now(pending, precond, clip_coef)
            self._done.append({**base, **{k: v.numpy() for k, v in cols.items()}})
            return
        self._queue.append((pending, snap, float(clip_coef), base))
        self._queued_elems += pending.coef.numel() * self._n_out
        if self._queued_elems > self.max_queued_elements:
            self._flush()

    def finish(self) -> list[dict[str, Any]]:
        """Every recorded step's columns, in recording order; clears the queue."""
        self._flush()
        done, self._done = self._done, []
        return done

    def _columns_now(self, pending: _Pending, precond: Any, clip_coef: Tensor) -> dict[str, Tensor]:
        k, batch = pending.coef.shape[1], pending.coef.shape[0]
        if self.path == "linear":
            assert pending.calls is not None and pending.d is not None
            blocks = persample.linear_blocks(pending.calls, pending.d, k, precond)
            if pending.direct is not None:
                log_std = self.policy.log_std  # type: ignore[attr-defined]
                blocks.append(persample.direct_block(pending.direct, k, precond(log_std)))
            gram = persample.gram_from_blocks(blocks)
        else:
            assert pending.params_before is not None
            gram = self._jacobian_gram(pending.params_before, pending.inputs, batch, k, precond)
        return _columns(gram, pending.coef, pending.alpha, pending.ent_part, pending.ent_coef_logp, clip_coef)

    def _snapshot(self, optimizer: th.optim.Optimizer) -> tuple[list[Tensor], float, float] | None:
        """(copies of the second moments of all parameters), Adam step and lr; None when the batched
        path cannot be used (not Adam, several groups, missing or unequal state)."""
        if not self._adam or len(optimizer.param_groups) != 1:
            return None
        states = [optimizer.state.get(p) for p in self._opt_params]
        if any(not st or "exp_avg_sq" not in st for st in states):
            return None
        step = float(states[0]["step"])  # type: ignore[index]
        if not self._steps_checked:  # all parameters step together (checked once per train())
            if any(float(st["step"]) != step for st in states[1:]):  # type: ignore[index]
                return None
            self._steps_checked = True
        v = th._foreach_mul([st["exp_avg_sq"] for st in states], 1.0)  # type: ignore[index]
        return v, step, float(optimizer.param_groups[0]["lr"])

    def _flush(self) -> None:
        """Compute the queued steps' columns, in chunks of steps with equal batch size."""
        queue, self._queue, self._queued_elems = self._queue, [], 0
        start = 0
        while start < len(queue):
            size = queue[start][0].coef.shape[0]
            end = start
            while end < len(queue) and queue[end][0].coef.shape[0] == size:
                end += 1
            self._flush_chunk(queue[start:end])
            start = end

    def _flush_chunk(
        self, chunk: list[tuple[_Pending, tuple[Tensor, float, float], float, dict[str, Any]]]
    ) -> None:
        if chunk[0][0].d_loss is not None:
            self._flush_reuse_chunk(chunk)
            return
        m = len(chunk)
        group = self._group
        beta1, beta2 = group["betas"]
        fac = self._adam_factors(chunk)
        first = chunk[0][0]
        k, batch = first.coef.shape[1], first.coef.shape[0]
        g1 = th.zeros(m, batch, k, k)
        gp2 = th.zeros(m, batch, k, k)
        gp00 = th.zeros(m, batch)  # only <s, F s> is needed with Q = F (self_reinforcement)

        def accumulate(d: dict[int, Tensor], w1: Tensor, qp: Tensor | None, qp2: Tensor) -> None:
            keys = sorted(d)
            for x, f in enumerate(keys):
                for h in keys[x:]:
                    prod = d[f] * d[h]  # (M, B, n)
                    s1 = prod.sum(-1) * w1 if w1.dim() == 2 else (prod * w1).sum(-1)
                    s2 = (prod * qp2).sum(-1)
                    g1[:, :, f, h] += s1
                    gp2[:, :, f, h] += s2
                    if f != h:
                        g1[:, :, h, f] += s1
                        gp2[:, :, h, f] += s2
                    elif f == 0 and qp is not None:
                        gp00.add_((prod * qp).sum(-1))

        for j, call in enumerate(first.calls or []):
            parts = sorted(first.d[j])  # type: ignore[index]
            if not parts:
                continue
            a2 = th.stack([c[0].calls[j].inputs for c in chunk]).square()  # (M, B, in)
            d = {h: th.stack([c[0].d[j][h] for c in chunk]) for h in parts}  # (M, B, out) each
            w, b = call.module.weight, call.module.bias
            out_dim = call.module.out_features
            need_qp = 0 in d
            qp = th.zeros(m, batch, out_dim) if need_qp else None
            qp2 = th.zeros(m, batch, out_dim)
            w1 = th.zeros(m, batch)
            if w.requires_grad:
                fw, fw2 = fac[id(w)]
                if need_qp:
                    qp = th.baddbmm(qp, a2, fw.transpose(1, 2))
                qp2 = th.baddbmm(qp2, a2, fw2.transpose(1, 2))
                w1 = w1 + a2.sum(-1)
            if b is not None and b.requires_grad:
                fb, fb2 = fac[id(b)]
                if need_qp:
                    qp = qp + fb[:, None, :]
                qp2 = qp2 + fb2[:, None, :]
                w1 = w1 + 1.0
            accumulate(d, w1, qp, qp2)
        if first.direct is not None:
            fl, fl2 = fac[id(self.policy.log_std)]  # type: ignore[attr-defined]
            d = {h: th.stack([c[0].direct[h] for c in chunk]) for h in first.direct}  # type: ignore[index]
            accumulate(d, th.ones(m, batch, 1), fl[:, None, :], fl2[:, None, :])
        gp = th.zeros(m, batch, k, k)
        gp[:, :, 0, 0] = gp00
        gram = persample.GramSet(g1.flatten(0, 1), gp.flatten(0, 1), gp2.flatten(0, 1))
        coef = th.cat([c[0].coef for c in chunk])
        alpha = th.cat([c[0].alpha for c in chunk])
        ecl = first.ent_coef_logp is not None
        ent_logp = th.cat([c[0].ent_coef_logp for c in chunk]) if ecl else None  # type: ignore[misc]
        clip = th.tensor([c[2] for c in chunk]).repeat_interleave(first.coef.shape[0])
        cols = _columns(gram, coef, alpha, first.ent_part, ent_logp, clip)
        batch = first.coef.shape[0]
        for i, c in enumerate(chunk):
            sl = slice(i * batch, (i + 1) * batch)
            self._done.append({**c[3], **{name: col[sl].numpy() for name, col in cols.items()}})

    def _adam_factors(self, chunk: list[Any]) -> dict[int, tuple[Tensor, Tensor]]:
        """``F = scale * P`` and ``F**2`` of every parameter for every queued step, ``(M, *shape)``."""
        group = self._group
        beta1, beta2 = group["betas"]
        step = th.tensor([c[1][1] for c in chunk], dtype=th.float64)
        lr = th.tensor([c[1][2] for c in chunk], dtype=th.float64)
        scale = (lr * (1 - beta1) / (1 - beta1**step)).to(th.float32)
        bc2_sqrt = th.sqrt(1 - beta2**step).to(th.float32)
        out = {}
        for n, p in enumerate(self._opt_params):
            v = th.stack([c[1][0][n] for c in chunk])  # (M, *shape)
            shape = (-1,) + (1,) * p.dim()
            # P = 1 / (sqrt(v) / sqrt(1 - beta2^k) + eps), as torch's Adam divides
            f = scale.view(shape) / (v.sqrt() / bc2_sqrt.view(shape) + group["eps"])
            out[id(p)] = (f, f.square())
        return out

    def _flush_reuse_chunk(self, chunk: list[Any]) -> None:
        """Columns from the training backward's own cotangents ``D = c^f d^f`` (one part per layer).

        With scaled Gram matrices ``G~ = c c^T * G``: pg = sqrt(G~1[s,s]), score = pg / |alpha|,
        self_reinforcement = -clip * G~F[s,s] / alpha; samples with alpha = 0 (clipped) get their
        score norm from exact per-sample gradients at the pre-step parameters.
        """
        m = len(chunk)
        first = chunk[0][0]
        k, batch = first.coef.shape[1], first.coef.shape[0]
        fac = self._adam_factors(chunk)
        coef = th.stack([c[0].coef for c in chunk])  # (M, B, K)
        g1 = th.zeros(m, batch, k, k)
        gp2 = th.zeros(m, batch, k, k)
        gp00 = th.zeros(m, batch)
        for j, call in enumerate(first.calls or []):
            part = first.layer_part[j]  # type: ignore[index]
            if part is None:
                continue
            zeros = None
            ds = []
            for c in chunk:
                dj = c[0].d_loss.get(j)
                if dj is None:
                    zeros = th.zeros(batch, call.module.out_features) if zeros is None else zeros
                    dj = zeros
                ds.append(dj)
            d2 = th.stack(ds).square()  # (M, B, out)
            a2 = th.stack([c[0].calls[j].inputs for c in chunk]).square()
            w, b = call.module.weight, call.module.bias
            w1 = th.zeros(m, batch)
            qp2 = th.zeros_like(d2)
            qp = th.zeros_like(d2) if part == 0 else None
            if w.requires_grad:
                fw, fw2 = fac[id(w)]
                qp2 = th.baddbmm(qp2, a2, fw2.transpose(1, 2))
                if qp is not None:
                    qp = th.baddbmm(qp, a2, fw.transpose(1, 2))
                w1 = w1 + a2.sum(-1)
            if b is not None and b.requires_grad:
                fb, fb2 = fac[id(b)]
                qp2 = qp2 + fb2[:, None, :]
                if qp is not None:
                    qp = qp + fb[:, None, :]
                w1 = w1 + 1.0
            g1[:, :, part, part] += d2.sum(-1) * w1
            gp2[:, :, part, part] += (d2 * qp2).sum(-1)
            if qp is not None:
                gp00 += (d2 * qp).sum(-1)
        if first.direct is not None:
            fl, fl2 = fac[id(self.policy.log_std)]  # type: ignore[attr-defined]
            fl, fl2 = fl[:, None, :], fl2[:, None, :]
            u = {h: th.stack([c[0].direct[h] for c in chunk]) * coef[:, :, h, None] for h in first.direct}
            keys = sorted(u)
            for x, p1 in enumerate(keys):
                for p2 in keys[x:]:
                    prod = u[p1] * u[p2]
                    s1, s2 = prod.sum(-1), (prod * fl2).sum(-1)
                    g1[:, :, p1, p2] += s1
                    gp2[:, :, p1, p2] += s2
                    if p1 != p2:
                        g1[:, :, p2, p1] += s1
                        gp2[:, :, p2, p1] += s2
                    elif p1 == 0:
                        gp00 += (prod * fl).sum(-1)
        alpha = coef[..., 0]
        clip = th.tensor([c[2] for c in chunk])[:, None]
        live = alpha != 0
        safe = th.where(live, alpha, th.ones_like(alpha))
        pg = g1[..., 0, 0].clamp_min(0).sqrt()
        score = th.where(live, pg / safe.abs(), th.zeros_like(pg))
        if not bool(live.all()):
            score[~live] = self._score_norms(chunk, ~live)
        ones = th.ones(k)
        cols = {
            "score_norm": score,
            "pg_grad_norm": pg,
            "entropy_grad_norm": (
                g1[..., first.ent_part, first.ent_part].clamp_min(0).sqrt()
                if first.ent_part is not None
                else th.zeros_like(pg)
            ),
            "value_grad_norm": g1[..., -1, -1].clamp_min(0).sqrt(),
            "loss_grad_norm": (g1 @ ones @ ones).clamp_min(0).sqrt(),
            "adam_update_norm": clip * (gp2 @ ones @ ones).clamp_min(0).sqrt(),
            "self_reinforcement": th.where(live, -clip * gp00 / safe, th.zeros_like(pg)),
        }
        for i, c in enumerate(chunk):
            self._done.append({**c[3], **{name: col[i].numpy() for name, col in cols.items()}})

    def _score_norms(self, chunk: list[Any], mask: Tensor) -> Tensor:
        """||grad log pi|| of the masked samples, exact, at each sample's own pre-step parameters."""
        idx = mask.nonzero()  # (C, 2): (step in chunk, sample)
        steps, pick = idx[:, 0], idx[:, 1]
        needed = th.unique(steps)  # steps holding clipped samples; they kept their parameters
        lut = th.full((len(chunk),), -1, dtype=th.long)
        lut[needed] = th.arange(len(needed))
        local = lut[steps]
        sub = [chunk[i][0] for i in needed.tolist()]
        # only parameters log pi depends on vary per sample; the others enter with zero gradient
        score_params = self._score_param_index(chunk[0][0])
        params = {
            name: th.stack([pd.params_list[n] for pd in sub])[local]
            for n, name in enumerate(self._opt_names)
            if n in score_params
        }
        fixed = {
            name: p.detach()
            for n, (name, p) in enumerate(zip(self._opt_names, self._opt_params, strict=True))
            if n not in score_params
        }
        obs = th.utils._pytree.tree_map(lambda *xs: th.stack(xs)[local, pick], *[pd.inputs[0] for pd in sub])
        act = th.stack([pd.inputs[1] for pd in sub])[local, pick]
        policy = self.policy

        def logp(p: dict[str, Tensor], o: Any, a: Tensor) -> Tensor:
            o1, a1 = th.utils._pytree.tree_map(lambda x: x.unsqueeze(0), (o, a))
            return _call(policy, {**p, **fixed}, o1, a1)[1].reshape(())

        old = th.distributions.Distribution._validate_args
        th.distributions.Distribution.set_default_validate_args(False)
        try:
            grads = th.func.vmap(th.func.grad(logp), in_dims=(0, 0, 0))(params, obs, act)
        finally:
            th.distributions.Distribution.set_default_validate_args(old)
        return sum(g.reshape(len(idx), -1).square().sum(1) for g in grads.values()).sqrt()  # type: ignore[union-attr]

    def _score_param_index(self, pending: _Pending) -> set[int]:
        """Indices (in optimizer order) of the parameters of the layers that log pi flows through."""
        owners: set[int] = set()
        for j, c in enumerate(pending.calls or []):
            if self._layer_part[j] == 0:
                owners |= {id(p) for p in c.module.parameters()}
        if self.gaussian:
            owners.add(id(self.policy.log_std))  # type: ignore[attr-defined]
        return {n for n, p in enumerate(self._opt_params) if id(p) in owners}

    def reset(self) -> None:
        """Forget the cached part supports (call at the start of each train())."""
        self._support = None
        self._steps_checked = False

    # ------------------------------------------------------------------ generic path
    def _params_now(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in persample.trainable(self.policy).items()}

    def _jacobian_gram(
        self, params: dict[str, Tensor], inputs: Any, batch: int, k: int, precond: Any
    ) -> persample.GramSet:
        policy = self.policy
        with_entropy = k == 3
        names = list(params)
        live = persample.trainable(policy)

        def parts_fn(p: dict[str, Tensor], sample: Any) -> Tensor:
            obs, act = th.utils._pytree.tree_map(lambda x: x.unsqueeze(0), sample)
            values, log_prob, entropy = _call(policy, p, obs, act)
            out = [log_prob.reshape(())]
            if with_entropy:
                out.append((entropy if entropy is not None else -log_prob).reshape(()))
            out.append(values.reshape(()))
            return th.stack(out)

        factors = {n: (precond(live[n]) or (None,))[0] for n in names} if precond is not None else None
        old = th.distributions.Distribution._validate_args
        th.distributions.Distribution.set_default_validate_args(False)
        try:
            return persample.jacobian_gram(
                parts_fn,
                {n: params[n] for n in names},
                inputs,
                batch,
                k,
                factors,
            )
        finally:
            th.distributions.Distribution.set_default_validate_args(old)


def _keep_grad(store: dict[int, Tensor], j: int) -> Any:
    def hook(grad: Tensor) -> None:
        store[j] = grad

    return hook


def _call(
    policy: ActorCriticPolicy, p: dict[str, Tensor], obs: Any, act: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(policy, p):
        return policy.evaluate_actions(obs, act)


def _fresh_step_factor(optimizer: th.optim.Optimizer) -> Any:
    """``param -> (F, F**2)`` with ``F = scale * P``, the elementwise factor that turns a gradient term
    into its share of the step (computed for all parameters at once with foreach ops)."""
    adam = isinstance(optimizer, th.optim.Adam | th.optim.AdamW)
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for group in optimizer.param_groups:
        if not adam:  # SGD without momentum: the step is lr * g
            for p in group["params"]:
                f = th.full_like(p, group["lr"]).detach()
                out[id(p)] = (f, f.square())
            continue
        beta1, beta2 = group["betas"]
        by_step: dict[float, list[nn.Parameter]] = {}
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "exp_avg_sq" in state:
                by_step.setdefault(float(state["step"]), []).append(p)
        for step, params in by_step.items():
            bc2_sqrt = math.sqrt(1.0 - beta2**step)
            scale = group["lr"] * (1.0 - beta1) / (1.0 - beta1**step)
            # as torch's Adam computes it: denom = sqrt(v) / sqrt(1 - beta2^k) + eps
            denom = th._foreach_sqrt([optimizer.state[p]["exp_avg_sq"] for p in params])
            th._foreach_div_(denom, bc2_sqrt)
            th._foreach_add_(denom, group["eps"])
            th._foreach_reciprocal_(denom)
            th._foreach_mul_(denom, scale)
            squares = th._foreach_mul(denom, denom)
            for p, f, f2 in zip(params, denom, squares, strict=True):
                out[id(p)] = (f, f2)

    def factor(param: nn.Parameter) -> tuple[Tensor, Tensor] | None:
        return out.get(id(param))

    return factor


def _columns(
    gram: persample.GramSet,
    c: Tensor,
    alpha: Tensor,
    ent_part: int | None,
    ent_coef_logp: Tensor | None,
    clip_coef: Tensor | float,
) -> dict[str, Tensor]:
    """The per-sample columns from the Gram matrices and the loss coefficients (see the schema)."""
    g1 = gram.g1
    score = g1[:, 0, 0].clamp_min(0).sqrt()
    pg = alpha.abs() * score
    if ent_part is not None:
        ent = c[:, ent_part].abs() * g1[:, ent_part, ent_part].clamp_min(0).sqrt()
    elif ent_coef_logp is not None:
        ent = ent_coef_logp.abs() * score
    else:
        ent = th.zeros_like(score)
    vf = c[:, -1].abs() * g1[:, -1, -1].clamp_min(0).sqrt()
    total = persample.quad(g1, c).clamp_min(0).sqrt()
    assert gram.gp is not None and gram.gp2 is not None
    adam = clip_coef * persample.quad(gram.gp2, c).clamp_min(0).sqrt()
    self_reinf = -clip_coef * alpha * gram.gp[:, 0, 0]
    return {
        "score_norm": score,
        "pg_grad_norm": pg,
        "entropy_grad_norm": ent,
        "value_grad_norm": vf,
        "loss_grad_norm": total,
        "adam_update_norm": adam,
        "self_reinforcement": self_reinf,
    }


def check_policy(policy: nn.Module) -> None:
    """Refuse policies whose per-sample losses are not independent, or that are recurrent."""
    if not isinstance(policy, ActorCriticPolicy):
        raise UnsupportedPolicyError(
            f"InstrumentedPPO needs an SB3 ActorCriticPolicy, got {type(policy).__name__}"
        )
    if hasattr(policy, "lstm_actor") or "Recurrent" in type(policy).__name__:
        raise UnsupportedPolicyError(
            f"{type(policy).__name__} is recurrent; InstrumentedPPO supports feed-forward policies only"
        )
    for name, module in policy.named_modules():
        if isinstance(module, _REFUSED_MODULES):
            raise UnsupportedPolicyError(
                f"policy module {name!r} is a {type(module).__name__}: it couples samples or draws random "
                "numbers, so per-sample gradients would be undefined or training would change; remove it"
            )
    if getattr(policy, "use_sde", False):
        raise UnsupportedPolicyError(
            "use_sde=True (gSDE) is not supported by InstrumentedPPO yet; use the default Gaussian policy"
        )


def check_optimizer(optimizer: th.optim.Optimizer) -> None:
    if isinstance(optimizer, th.optim.Adam | th.optim.AdamW):
        for g in optimizer.param_groups:
            if g.get("amsgrad") or g.get("maximize"):
                raise UnsupportedPolicyError(
                    "optimizer: Adam with amsgrad or maximize is not supported; use plain Adam/AdamW"
                )
        return
    if isinstance(optimizer, th.optim.SGD):
        for g in optimizer.param_groups:
            if g.get("momentum") or g.get("maximize"):
                raise UnsupportedPolicyError(
                    "optimizer: SGD is supported without momentum only (momentum=0); use Adam for momentum"
                )
        return
    raise UnsupportedPolicyError(
        f"optimizer {type(optimizer).__name__} is not supported: the samples table needs Adam, AdamW or SGD "
        "(policy_kwargs=dict(optimizer_class=th.optim.Adam))"
    )
