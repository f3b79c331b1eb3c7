"""Per-sample columns of the `samples` table for an SB3 actor-critic policy.

Glue between SB3's policy/optimizer and the tensor math of :mod:`rledger.persample` and
:mod:`rledger.replay`. For each minibatch, :meth:`SampleGeometry.before_step` runs while the loss
graph is alive (per-sample coefficients of each loss part; what the layers' gradients need), and
:meth:`SampleGeometry.record` runs after the optimizer step and reads the state the step produced.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from rledger import persample
from rledger.replay import Parts, Replayer, StepBuffers, clip_coefs, columns

_REFUSED_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.RNNBase, nn.GroupNorm)


class UnsupportedPolicyError(ValueError):
    """The policy or optimizer cannot be instrumented exactly."""


@dataclass
class LossTerms:
    """The per-sample inputs of SB3's PPO loss: ``(B,)`` tensors of one minibatch, or ``(S, B)`` of many steps."""

    advantages: Tensor  # as used (normalized or not)
    ratio: Tensor
    clip_range: float | Tensor  # or (S, 2) float64 bounds (1 - eps, 1 + eps) of many steps
    values: Tensor  # current V(s), flattened
    old_values: Tensor
    returns: Tensor
    clip_range_vf: float | Tensor | None  # or (S, 2) bounds (-eps_vf, eps_vf)
    ent_coef: float
    vf_coef: float


def loss_coefficients(
    terms: LossTerms, has_entropy: bool
) -> tuple[Tensor, Tensor, int | None, Tensor | None, Tensor]:
    """Per-sample coefficients of the loss parts: ``d loss / d f_i`` for f in (log pi, [H], V).

    Closed forms of the derivatives autograd takes through SB3's loss: the clipped surrogate
    ``-mean(min(A r, A clamp(r)))`` gives ``-A r / B`` unless clipping is active (then 0; at the exact
    clip bound ``min`` ties and ``clamp`` passes the gradient, so the sample is not clipped); the value
    loss ``vf_coef * mean((R - V_pred)^2)`` gives ``2 vf_coef (V_pred - R) / B``, times 0 where
    ``clip_range_vf`` clamps; the entropy loss ``-ent_coef * mean(H)`` gives ``-ent_coef / B`` (or
    ``+ent_coef / B`` on log pi when the distribution has no analytic entropy).
    Returns (coef ``(B, K)``, alpha ``(B,)``, index of the entropy part or None, entropy-on-log-pi
    coefficient or None, the ``clipped`` flags ``(B,)``).
    """
    a, r = terms.advantages.detach(), terms.ratio.detach()
    batch = a.shape[-1]
    lo, hi = _bounds(terms.clip_range, 1.0)
    clamped = th.clamp(r, lo, hi)
    clipped = ((a > 0) & (r > clamped)) | ((a < 0) & (r < clamped))
    alpha = th.where(clipped, th.zeros_like(r), -(a * r) / batch)
    v = terms.values.detach()
    if terms.clip_range_vf is None:
        v_pred = v
        vmask = None
    else:
        vlo, vhi = _bounds(terms.clip_range_vf, 0.0)
        diff = v - terms.old_values
        v_pred = terms.old_values + th.clamp(diff, vlo, vhi)
        vmask = (diff >= vlo) & (diff <= vhi)
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
    return th.stack(coefs, -1), alpha, ent_part, ent_logp, clipped


def _bounds(clip: float | Tensor, center: float) -> tuple[Any, Any]:
    """``(center - clip, center + clip)``: Python floats as SB3 passes them to ``th.clamp`` (which
    rounds them to float32), or per-step ``(S, 2)`` float64 bounds rounded the same way."""
    if isinstance(clip, Tensor):
        b = clip.float()
        return b[:, :1], b[:, 1:]
    return center - clip, center + clip


@dataclass
class _Pending:
    """What :meth:`SampleGeometry.before_step` hands to :meth:`SampleGeometry.record`."""

    coef: Tensor | None = None  # (B, K): per-sample coefficient of each part in the loss
    alpha: Tensor | None = None  # (B,): coefficient of log pi in the policy loss alone
    # (B,): coefficient of log pi in the entropy loss (no analytic entropy)
    ent_coef_logp: Tensor | None = None
    ent_part: int | None = None
    clipped: Tensor | None = None  # (B,): clipping zeroes the sample's policy gradient (None: batched)
    batched: bool = False  # the step lives in the slot buffers; its columns come at the flush
    calls: list[persample.LinearCall] | None = None
    d: list[dict[int, Tensor]] | None = None
    direct: dict[int, Tensor] | None = None  # per-sample log_std gradients (Gaussian)
    params_before: dict[str, Tensor] | None = None  # generic path
    inputs: Any = None


class SampleGeometry:
    """Computes the per-sample columns of the ``samples`` table for one SB3 ``ActorCriticPolicy``.

    ``path`` is ``"linear"`` (every trainable parameter lives in an ``nn.Linear`` called once per
    forward, plus a Gaussian ``log_std``) or ``"generic"`` (``torch.func`` per-sample Jacobians).
    On the linear path the mode is ``"batched"`` when the optimizer is Adam/AdamW with one parameter
    group: each step only copies its parameters and loss inputs, and :mod:`rledger.replay` computes the
    columns of many steps at once by replaying their forward passes; else ``"extra-backward"`` (forward
    hooks on the Linear layers during the minibatch's forward pass, one more backward pass per
    minibatch to the layer outputs).
    """

    def __init__(self, policy: ActorCriticPolicy, optimizer: th.optim.Optimizer, action_space: spaces.Space):
        self.policy = policy
        self.action_space = action_space
        check_policy(policy)
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self.linears = persample.linear_modules(policy)
        self.gaussian = type(policy.action_dist) is DiagGaussianDistribution
        self.path = self._choose_path()
        self.mode: str | None = None
        self.batched_enabled = True
        self.mlp_replay_enabled = True  # False: replay SB3's MLP policies with torch.func too (tests)
        self._support: list[set[int]] | None = None
        self._adam = isinstance(optimizer, th.optim.Adam | th.optim.AdamW)
        self._opt_params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        names = {id(p): n for n, p in policy.named_parameters()}
        self._opt_names = [names[id(p)] for p in self._opt_params]
        self._batch: StepBuffers | None = None
        self._batches: dict[int, list[StepBuffers]] = {}  # per minibatch size: at most two sets
        self._submit: (
            Callable[[Callable[[], dict[str, np.ndarray]]], Future[dict[str, np.ndarray]]] | None
        ) = None
        self._replayer: Replayer | None = None
        self._v_views: list[Tensor] | None = None
        self._step_tensor: Any = None
        self._parts: Parts | None = None
        self._epochs_hint = 1
        self._fetch: Callable[[np.ndarray], tuple[Any, Tensor]] | None = None
        self._steps_hint = 1
        self._flush_every: int | None = None
        self.max_grad_norm = math.inf
        self._done: list[dict[str, np.ndarray] | Future[dict[str, np.ndarray]]] = []

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

    def reset(
        self,
        fetch: Callable[[np.ndarray], tuple[Any, Tensor]],
        steps_hint: int,
        epochs: int = 1,
        submit: Callable[[Callable[[], dict[str, np.ndarray]]], Future[dict[str, np.ndarray]]] | None = None,
        flush_every: int | None = None,
        max_grad_norm: float = math.inf,
    ) -> None:
        """Start a train() call. ``fetch((t, env) pairs)`` returns those samples' observations and
        actions from the rollout buffer; ``steps_hint`` is the number of optimizer steps expected.
        ``submit(job)`` runs a batched computation elsewhere (a background thread) and returns its
        future; ``None``: compute in the calling thread. ``flush_every``: hand the buffered steps over
        every that many steps (else when the buffers are full or the call ends). ``max_grad_norm``:
        the clipping threshold passed to ``clip_grad_norm_``."""
        self._flush_every = flush_every
        self.max_grad_norm = max_grad_norm
        self._support = None
        self._submit = submit
        self._v_views = None
        self._step_tensor = None
        self._parts = None
        self.mode = self._choose_mode() if self.path == "linear" else None
        self._fetch = fetch
        self._steps_hint = max(1, steps_hint)
        self._epochs_hint = max(1, epochs)

    # ------------------------------------------------------------------ per minibatch
    @contextlib.contextmanager
    def capture(self) -> Iterator[persample.LinearCapture | None]:
        """Wrap the minibatch's forward pass (hooks only on the fast path, removed on exit)."""
        if self.path == "linear" and self.mode != "batched":
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
        """Per-sample loss coefficients and, on the linear path, what the layers' gradients need.

        Must run before ``loss.backward()``. Touches no ``.grad``, optimizer state or RNG.
        """
        if self.mode == "batched":
            if self._parts is None:
                self._parts = _parts(terms, entropy is not None)
            loss_inputs = [terms.advantages, terms.ratio, terms.values, terms.old_values, terms.returns]
            self._batch_for(terms.advantages.shape[0]).put_before(
                loss_inputs, terms.clip_range, terms.clip_range_vf
            )
            return _Pending(batched=True)
        coef, alpha, ent_part, ent_coef_logp, clipped = loss_coefficients(terms, entropy is not None)
        pending = _Pending(coef, alpha, ent_coef_logp, ent_part, clipped)
        if self.path == "generic":
            pending.params_before = {
                n: p.detach().clone() for n, p in persample.trainable(self.policy).items()
            }
            pending.inputs = (obs, actions)
            return pending
        assert cap is not None
        calls = cap.calls
        parts: list[Tensor] = [log_prob] + ([entropy] if ent_part is not None else []) + [values]  # type: ignore[list-item]
        if self._support is None:
            self._support = persample.supports(parts, calls)
        pending.calls = calls
        pending.d = persample.output_grads(parts, calls, self._support)
        if self.gaussian:
            dist = self.policy.action_dist.distribution
            u_logp = (((actions - dist.loc) / dist.scale).square() - 1.0).detach()  # d log pi / d log_std
            pending.direct = {0: u_logp}
            if ent_part is not None:
                pending.direct[ent_part] = th.ones_like(u_logp)
        for call in calls:  # the step keeps no reference to the autograd graph
            call.output = None
        return pending

    def record(
        self, pending: _Pending, optimizer: th.optim.Optimizer, grad_norm: Tensor, base: dict[str, Any]
    ) -> None:
        """After the optimizer step: the step's columns (now, or batched until :meth:`finish`).
        ``grad_norm``: the total norm ``clip_grad_norm_`` returned for this step."""
        if pending.batched:
            assert self._batch is not None
            group = optimizer.param_groups[0]
            if self._v_views is None:  # Adam's state tensors are updated in place: views stay current
                self._v_views = [optimizer.state[p]["exp_avg_sq"].view(-1) for p in self._opt_params]
                self._step_tensor = optimizer.state[self._opt_params[0]]["step"]
            self._batch.put_after(
                self._v_views, float(self._step_tensor), float(group["lr"]), grad_norm, base
            )
            if self._batch.full or (self._flush_every is not None and self._batch.m >= self._flush_every):
                self._flush()
            return
        precond = _fresh_step_factor(optimizer)
        cols = self._columns_now(pending, precond, clip_coefs(grad_norm, self.max_grad_norm))
        row = {k: np.asarray(v) for k, v in base.items() if k not in ("rollout", "epoch", "minibatch")}
        n = len(row["t"])
        row.update({k: np.full(n, base[k]) for k in ("rollout", "epoch", "minibatch")})
        row.update({k: v.numpy() for k, v in cols.items()})
        self._done.append(row)

    def finish(self) -> list[dict[str, np.ndarray] | Future[dict[str, np.ndarray]]]:
        """The recorded samples of this train() call, in recording order: column dicts, or futures of
        them for batched computations still running (:func:`combine` joins them)."""
        self._flush()
        done, self._done = self._done, []
        return done

    # ------------------------------------------------------------------ modes
    def _choose_mode(self) -> str:
        """``"batched"`` for Adam/AdamW with one parameter group, else ``"extra-backward"``."""
        if self.batched_enabled and self._adam and len(self.optimizer.param_groups) == 1:
            if self._replayer is None:
                self._replayer = self._make_replayer()
            return "batched"
        return "extra-backward"

    def _make_replayer(self) -> Replayer:
        replayer = Replayer(
            self.policy,
            list(self.linears),
            ["log_std"] if self.gaussian else [],
            self._dummy_batch(2),
            _functional_calls,
        )
        if not self.mlp_replay_enabled:
            replayer.plan = None
        return replayer

    def _batch_for(self, batch: int) -> StepBuffers:
        """The slot buffers for this minibatch size. Buffers are kept per size (a truncated last
        minibatch gets its own); switching size flushes the active ones first, so rows stay in order.
        While one set is being flushed in the background, a second one takes the next steps."""
        if self._batch is not None and self._batch.batch == batch and not self._batch.full:
            return self._batch
        self._flush()
        pool = self._batches.setdefault(batch, [])
        free = [b for b in pool if not b.busy]
        if not free and len(pool) >= 2:  # both sets are being flushed: the background thread is behind
            for b in pool:
                if b.future is not None:
                    b.future.result()
            free = [b for b in pool if not b.busy]
        if not free:
            # the truncated minibatch occurs once per epoch: size its buffers to n_epochs steps
            hint = self._steps_hint if len(self._batches) == 1 else max(1, self._epochs_hint)
            pool.append(StepBuffers(self._opt_params, self._opt_names, batch, hint))
            free = pool[-1:]
        self._batch = free[0]
        return self._batch

    def _flush(self) -> None:
        buf = self._batch
        if buf is None or buf.m == 0:
            return
        group = self.optimizer.param_groups[0]
        assert self._fetch is not None and self._replayer is not None and self._parts is not None
        # now: the rollout buffer is refilled while the flush runs
        obs, act = buf.gather(self._fetch, self.max_grad_norm)
        args = (self._replayer, self._parts, group["eps"], group["betas"], obs, act)
        if self._submit is None:
            self._done.append(buf.flush(*args))
            return
        buf.busy = True
        self._batch = None
        buf.future = self._submit(functools.partial(buf.flush, *args))
        self._done.append(buf.future)

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
        with _functional_calls(policy):
            return persample.jacobian_gram(parts_fn, {n: params[n] for n in names}, inputs, batch, k, factors)


@contextlib.contextmanager
def _functional_calls(policy: ActorCriticPolicy) -> Iterator[None]:
    """Around torch.func transforms of the policy: no data-dependent argument validation in
    torch.distributions, and SB3's action distribution object (which every forward overwrites) is
    restored afterwards, so no transformed tensor outlives the transform.

    The validation default is a class attribute, shared by all threads: while the background thread
    replays a policy with ``torch.func``, distributions built elsewhere skip their argument checks too
    (values and training are unaffected; only the checks' errors would be)."""
    old_validate = th.distributions.Distribution._validate_args
    dist_obj = policy.action_dist
    saved = dict(vars(dist_obj))
    th.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        th.distributions.Distribution.set_default_validate_args(old_validate)
        vars(dist_obj).clear()
        vars(dist_obj).update(saved)


def _reparametrize(policy: nn.Module, p: dict[str, Tensor]) -> Any:
    from torch.nn.utils.stateless import _reparametrize_module

    return _reparametrize_module(policy, p)


def _call(
    policy: ActorCriticPolicy, p: dict[str, Tensor], obs: Any, act: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(policy, p):
        return policy.evaluate_actions(obs, act)


def combine(
    pieces: list[dict[str, np.ndarray] | Future[dict[str, np.ndarray]]],
) -> dict[str, np.ndarray] | None:
    """Join :meth:`SampleGeometry.finish`'s pieces into one set of columns (waiting for futures;
    their errors are raised here). ``None`` when nothing was recorded."""
    done = [p.result() if isinstance(p, Future) else p for p in pieces]
    if not done:
        return None
    return {k: np.concatenate([d[k] for d in done]) for k in done[0]}


def _parts(terms: LossTerms, has_entropy: bool) -> Parts:
    ent = terms.ent_coef != 0
    return Parts(
        k=3 if ent and has_entropy else 2,
        ent_part=1 if ent and has_entropy else None,
        ent_logp=ent and not has_entropy,
        clip_vf=terms.clip_range_vf is not None,
        ent_coef=float(terms.ent_coef),
        vf_coef=float(terms.vf_coef),
    )


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
    """The per-sample columns from one minibatch's Gram matrices (:func:`rledger.replay.columns`)."""
    assert gram.gp is not None and gram.gp2 is not None
    return columns(gram.g1, gram.gp2, gram.gp[:, 0, 0], c, alpha, ent_part, ent_coef_logp, clip_coef)


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
