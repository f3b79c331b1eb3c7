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
        # batched fast path: queue of recorded steps, flat layout of the optimizer's parameters
        self.max_queued_elements = 1 << 23
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
            pending.calls = calls
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
        snap = self._snapshot(optimizer) if self.path == "linear" else None
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

    def _snapshot(self, optimizer: th.optim.Optimizer) -> tuple[Tensor, float, float] | None:
        """(second moments of all parameters, flat), Adam step and lr; None when the batched path
        cannot be used for this step (not Adam, several groups, missing or unequal state)."""
        if not self._adam or len(optimizer.param_groups) != 1:
            return None
        states = [optimizer.state.get(p) for p in self._opt_params]
        if any(not st or "exp_avg_sq" not in st for st in states):
            return None
        step = float(states[0]["step"])
        if any(float(st["step"]) != step for st in states[1:]):  # type: ignore[index]
            return None
        v = th.cat([st["exp_avg_sq"].reshape(-1) for st in states])  # type: ignore[index]
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

    def _flush_chunk(self, chunk: list[tuple[_Pending, tuple[Tensor, float, float], float, dict[str, Any]]]) -> None:
        m = len(chunk)
        group = self._group
        beta1, beta2 = group["betas"]
        v = th.stack([c[1][0] for c in chunk])  # (M, N_params)
        step = th.tensor([c[1][1] for c in chunk], dtype=th.float64)
        lr = th.tensor([c[1][2] for c in chunk], dtype=th.float64)
        scale = (lr * (1 - beta1) / (1 - beta1**step)).to(v.dtype)
        bc2_sqrt = th.sqrt(1 - beta2**step).to(v.dtype)
        # F = scale * P with P = 1 / (sqrt(v) / sqrt(1 - beta2^k) + eps), as torch's Adam divides
        f = scale[:, None] / (v.sqrt() / bc2_sqrt[:, None] + group["eps"])
        f2 = f.square()
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
                lo, hi = self._offsets[id(w)]
                if need_qp:
                    qp = th.baddbmm(qp, a2, f[:, lo:hi].view(m, *w.shape).transpose(1, 2))
                qp2 = th.baddbmm(qp2, a2, f2[:, lo:hi].view(m, *w.shape).transpose(1, 2))
                w1 = w1 + a2.sum(-1)
            if b is not None and b.requires_grad:
                lo, hi = self._offsets[id(b)]
                if need_qp:
                    qp = qp + f[:, None, lo:hi]
                qp2 = qp2 + f2[:, None, lo:hi]
                w1 = w1 + 1.0
            accumulate(d, w1, qp, qp2)
        if first.direct is not None:
            log_std = self.policy.log_std  # type: ignore[attr-defined]
            lo, hi = self._offsets[id(log_std)]
            d = {h: th.stack([c[0].direct[h] for c in chunk]) for h in first.direct}  # type: ignore[index]
            accumulate(d, th.ones(m, batch, 1), f[:, None, lo:hi], f2[:, None, lo:hi])
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

    def reset(self) -> None:
        """Forget the cached part supports (call at the start of each train())."""
        self._support = None

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
