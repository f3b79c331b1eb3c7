"""The per-sample engine: the ``samples`` table's columns for every optimizer step of ``train()``.

:class:`PerSampleEngine` picks the way for a policy and optimizer and drives it, step by step:
:meth:`~PerSampleEngine.before_step` runs while the minibatch's loss graph is alive,
:meth:`~PerSampleEngine.after_step` after the optimizer step (it reads the state the step produced),
:meth:`~PerSampleEngine.finish` at the end of ``train()``. The ways:

- ``linear`` path, ``batched`` mode (Adam/AdamW with one parameter group): each step is copied into slot
  buffers (:mod:`~rledger.persample.slots`); their columns come from one replay of many steps, in the
  calling thread or handed to ``submit`` (a background thread).
- ``linear`` path, ``extra-backward`` mode (SGD, several parameter groups): forward hooks keep each
  Linear call's input and output (:meth:`~PerSampleEngine.capture`, open for the whole ``train()``),
  and one more backward pass to the layer outputs per minibatch gives the output gradients.
- ``conv`` path (Conv2d and Linear layers, e.g. SB3's ``CnnPolicy``): always the extra-backward mode;
  a Conv2d layer's share comes from its unfolded input patches and output gradients
  (:func:`~rledger.persample.gram.conv_gram`).
- ``generic`` path (custom modules with their own parameters): exact per-sample Jacobians with
  ``torch.func`` at a copy of the step's starting parameters
  (:func:`~rledger.persample.functional.jacobian_gram`).

With the ``momentum`` table (and watched pairs), the batched mode's flushes also feed a
:class:`~rledger.persample.momentum.MomentumTracker` (:meth:`~PerSampleEngine.enable_momentum`,
:meth:`~PerSampleEngine.enable_influence`).

None of them touches ``.grad``, optimizer state or a random number generator. Imports go one way:
``loss`` <- ``gram`` <- ``functional`` <- ``replay``; ``gram`` and ``loss`` <- ``influence`` <-
``momentum`` <- ``slots`` <- ``checks`` <- ``engine``.
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
from torch import Tensor

from rledger.persample.checks import (
    UnsupportedPolicyError,
    batched_supported,
    check_optimizer,
    check_policy,
    choose_path,
    dummy_batch,
    is_adam,
    layer_modules,
    linear_modules,
    trainable,
)
from rledger.persample.functional import jacobian_gram
from rledger.persample.gram import Gram, LayerCapture, linear_gram, output_grads, supports
from rledger.persample.influence import Watched
from rledger.persample.loss import (
    LossTerms,
    Parts,
    adam_step_factor,
    clip_coefs,
    columns,
    loss_coefficients,
    sgd_step_factor,
)
from rledger.persample.momentum import MomentumTracker, default_horizon
from rledger.persample.replay import Replayer
from rledger.persample.slots import StepBuffers, per_param_views

Columns = dict[str, np.ndarray]
Submit = Callable[[Callable[[], Columns]], "Future[Columns]"]


@dataclass
class _Pending:
    """What :meth:`PerSampleEngine.before_step` hands to :meth:`PerSampleEngine.after_step`."""

    batched: bool = False  # the step lives in the slot buffers; its columns come at the flush
    coef: Tensor | None = None  # (B, K): per-sample coefficient of each part in the loss
    alpha: Tensor | None = None  # (B,): coefficient of log pi in the policy loss alone
    ent_coef_logp: Tensor | None = None  # (B,): coefficient of log pi in the entropy loss (no entropy)
    ent_part: int | None = None
    clipped: Tensor | None = None  # (B,): clipping zeroes the sample's policy gradient
    advantages: Tensor | None = None  # (B,): as the loss used them
    ratio: Tensor | None = None
    calls: list[Any] | None = None  # extra-backward: the Linear calls and their output gradients
    d: list[dict[int, Tensor]] | None = None
    direct: dict[int, Tensor] | None = None  # per-sample log_std gradients (Gaussian)
    params_before: dict[str, Tensor] | None = None  # generic path
    inputs: Any = None


class PerSampleEngine:
    """Computes the per-sample columns of the ``samples`` table for one SB3 ``ActorCriticPolicy``.

    ``path`` is ``"linear"``, ``"conv"`` or ``"generic"``; on the linear path ``mode`` (set by
    :meth:`start`) is ``"batched"`` or ``"extra-backward"``, on the conv path ``"extra-backward"``.
    Refuses, with :class:`UnsupportedPolicyError`, what it cannot compute exactly
    (:mod:`rledger.persample.checks`).
    """

    def __init__(self, policy: ActorCriticPolicy, optimizer: th.optim.Optimizer, action_space: spaces.Space):
        check_policy(policy)
        check_optimizer(optimizer)
        self.policy = policy
        self.optimizer = optimizer
        self.action_space = action_space
        self.linears = linear_modules(policy)
        self.layers = layer_modules(policy)
        self.gaussian = type(policy.action_dist) is DiagGaussianDistribution
        self.path = choose_path(policy, self.gaussian, dummy_batch(policy, action_space, 2))
        self.mode: str | None = None
        self.max_grad_norm = math.inf
        self._opt_params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        self._names = {id(p): n for n, p in policy.named_parameters()}
        self._opt_names = [self._names[id(p)] for p in self._opt_params]
        self._support: list[set[int]] | None = None
        self._capture: LayerCapture | None = None
        self._batch: StepBuffers | None = None
        self._batches: dict[int, list[StepBuffers]] = {}  # per minibatch size: at most two sets
        self._submit: Submit | None = None
        self._replayer: Replayer | None = None
        self._v_views: list[Tensor] | None = None
        self._step_tensor: Any = None
        self._parts: Parts | None = None
        self._fetch: Callable[[np.ndarray], tuple[Any, Tensor]] | None = None
        self._steps_hint = 1
        self._epochs_hint = 1
        self._flush_every: int | None = None
        self._done: list[Columns | Future[Columns]] = []
        self.momentum: MomentumTracker | None = None

    def enable_momentum(self, horizon: int | None = None) -> MomentumTracker:
        """Compute the ``momentum`` table too (:mod:`rledger.persample.momentum`), counting at most
        ``horizon`` steps per sample (default: until ``beta1^n <= 1e-9``). Needs the batched mode:
        Adam or AdamW with one parameter group, a policy of the linear path."""
        if self.path != "linear" or not batched_supported(self.optimizer):
            raise UnsupportedPolicyError(
                "record: the momentum table needs Adam or AdamW with one parameter group and a policy "
                f"of Linear layers only (this one: {type(self.optimizer).__name__} with "
                f"{len(self.optimizer.param_groups)} parameter group(s), {self.path} path); leave "
                "'momentum' out of record"
            )
        beta1 = float(self.optimizer.param_groups[0]["betas"][0])
        if horizon is None:
            horizon = default_horizon(beta1)
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"momentum_horizon: must be an integer >= 1, got {horizon!r}")
        per_param = functools.partial(
            per_param_views,
            names=list(self._opt_names),
            sizes=[p.numel() for p in self._opt_params],
            shapes=[tuple(p.shape) for p in self._opt_params],
        )
        self.momentum = MomentumTracker(beta1, horizon, per_param)
        return self.momentum

    def enable_influence(self, watched: Watched, every: int = 1) -> None:
        """Compute the ``influence`` and ``influence_steps`` tables for these watched pairs, every
        ``every``-th rollout (after :meth:`enable_momentum`)."""
        if self.momentum is None:
            raise ValueError("record: the influence tables need the momentum table; record 'momentum' too")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"influence_every: must be an integer >= 1, got {every!r}")
        self.momentum.watched = watched
        self.momentum.influence_every = every

    def validate(self) -> None:
        """Run the generic path once on a dummy batch so that a policy it cannot handle fails now."""
        if self.path != "generic":
            return
        obs, act = dummy_batch(self.policy, self.action_space, 2)
        try:
            jacobian_gram(self.policy, trainable(self.policy), obs, act, 2, {})
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise UnsupportedPolicyError(
                f"rledger cannot compute exact per-sample gradients of {type(self.policy).__name__} "
                f"(generic torch.func path failed: {type(exc).__name__}: {exc}). Use a feed-forward "
                "policy without data-dependent control flow, or record=('transitions', 'updates', 'episodes')."
            ) from exc

    # ------------------------------------------------------------------ per train() call
    def start(
        self,
        fetch: Callable[[np.ndarray], tuple[Any, Tensor]],
        steps_hint: int,
        epochs: int = 1,
        submit: Submit | None = None,
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
        if self.path == "linear":
            self.mode = self._choose_mode()
        else:  # the conv path takes the live graph's output gradients; the generic path has no mode
            self.mode = "extra-backward" if self.path == "conv" else None
        self._fetch = fetch
        self._steps_hint = max(1, steps_hint)
        self._epochs_hint = max(1, epochs)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Open around a train() call: forward hooks on the Linear layers in the extra-backward mode
        (none otherwise), removed on exit, also on error."""
        if self.path == "generic" or self.mode == "batched":
            yield
            return
        with LayerCapture(self.layers) as cap:
            self._capture = cap
            try:
                yield
            finally:
                self._capture = None

    def before_step(
        self,
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
                self._parts = Parts.of(terms, entropy is not None)
            loss_inputs = [terms.advantages, terms.ratio, terms.values, terms.old_values, terms.returns]
            self._batch_for(terms.advantages.shape[0]).put_before(
                loss_inputs, terms.clip_range, terms.clip_range_vf
            )
            return _Pending(batched=True)
        coef, alpha, ent_part, ent_coef_logp, clipped = loss_coefficients(terms, entropy is not None)
        pending = _Pending(
            False,
            coef,
            alpha,
            ent_coef_logp,
            ent_part,
            clipped,
            terms.advantages.detach(),
            terms.ratio.detach(),
        )
        if self.path == "generic":
            pending.params_before = {n: p.detach().clone() for n, p in trainable(self.policy).items()}
            pending.inputs = (obs, actions)
            return pending
        assert self._capture is not None, "before_step in the extra-backward mode needs capture() open"
        calls = self._capture.take()
        parts: list[Tensor] = [log_prob] + ([entropy] if ent_part is not None else []) + [values]  # type: ignore[list-item]
        if self._support is None:
            self._support = supports(parts, calls)
        pending.calls = calls
        pending.d = output_grads(parts, calls, self._support)
        if self.gaussian:
            dist = self.policy.action_dist.distribution
            u_logp = (((actions - dist.loc) / dist.scale).square() - 1.0).detach()  # d log pi / d log_std
            pending.direct = {0: u_logp}
            if ent_part is not None:
                pending.direct[ent_part] = th.ones_like(u_logp)
        for call in calls:  # the step keeps no reference to the autograd graph
            call.output = None
        return pending

    def after_step(self, pending: _Pending, grad_norm: Tensor, base: dict[str, Any]) -> None:
        """After the optimizer step: the step's columns (now, or from the slot buffers at a flush).
        ``grad_norm``: the total norm ``clip_grad_norm_`` returned for this step; ``base``: the step's
        ``rollout``, ``epoch``, ``minibatch`` and its samples' ``t`` and ``env``."""
        if pending.batched:
            assert self._batch is not None
            group = self.optimizer.param_groups[0]
            if self._v_views is None:  # Adam's state tensors are updated in place: views stay current
                self._v_views = [self.optimizer.state[p]["exp_avg_sq"].view(-1) for p in self._opt_params]
                self._step_tensor = self.optimizer.state[self._opt_params[0]]["step"]
            self._batch.put_after(
                self._v_views, float(self._step_tensor), float(group["lr"]), grad_norm, base
            )
            if self._batch.full or (self._flush_every is not None and self._batch.m >= self._flush_every):
                self._flush()
            return
        assert pending.coef is not None and pending.alpha is not None
        # in the calling thread: on the conv path a background thread was slower (measured on
        # NatureCNN, 2 cores: 3.1x plain PPO against 2.5x), its torch calls contending for the cores
        # with the training's own
        self._done.append(self._columns_now(pending, self._step_factors(), grad_norm, base))

    def _columns_now(
        self,
        pending: _Pending,
        fac: dict[str, tuple[Tensor, Tensor]],
        grad_norm: Tensor,
        base: dict[str, Any],
    ) -> Columns:
        """One step's columns on the per-minibatch ways, from its step scales ``fac``."""
        assert pending.coef is not None and pending.alpha is not None
        gram = self._gram_now(pending, pending.coef.shape[1], fac)
        clip = clip_coefs(grad_norm, self.max_grad_norm)
        cols = columns(
            gram.g1[0], gram.gp2[0], gram.gp00[0], pending.coef, pending.alpha, pending.ent_part,
            pending.ent_coef_logp, clip,
        )  # fmt: skip
        n = len(base["t"])
        row: Columns = {k: np.full(n, base[k]) for k in ("rollout", "epoch", "minibatch")}
        row.update(t=np.asarray(base["t"]), env=np.asarray(base["env"]))
        row.update(advantage_used=pending.advantages.cpu().numpy(), ratio=pending.ratio.cpu().numpy())  # type: ignore[union-attr]
        row["clipped"] = pending.clipped.cpu().numpy()  # type: ignore[union-attr]
        row.update({k: v.cpu().numpy() for k, v in cols.items()})
        return row

    def finish(self) -> list[Columns | Future[Columns]]:
        """The recorded samples of this train() call, in recording order: column dicts, or futures of
        them for batched computations still running."""
        self._flush()
        done, self._done = self._done, []
        return done

    # ------------------------------------------------------------------ batched mode
    def _choose_mode(self) -> str:
        if batched_supported(self.optimizer):
            if self._replayer is None:
                self._replayer = Replayer(
                    self.policy,
                    list(self.linears),
                    ["log_std"] if self.gaussian else [],
                    dummy_batch(self.policy, self.action_space, 2),
                )
            return "batched"
        return "extra-backward"

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
        obs, act = buf.gather(
            self._fetch,
            self.max_grad_norm,
            end=self.momentum is not None and self.momentum.watched is not None,
        )
        args = (self._replayer, self._parts, group["eps"], group["betas"], obs, act, self.momentum)
        if self._submit is None:
            self._done.append(buf.flush(*args))
            return
        buf.busy = True
        self._batch = None
        buf.future = self._submit(functools.partial(buf.flush, *args))
        self._done.append(buf.future)

    # ------------------------------------------------------------------ per-minibatch ways
    def _gram_now(self, pending: _Pending, k: int, fac: dict[str, tuple[Tensor, Tensor]]) -> Gram:
        if self.path == "generic":
            assert pending.params_before is not None
            factors = {n: fac[n][0] if n in fac else None for n in pending.params_before}
            return jacobian_gram(self.policy, pending.params_before, *pending.inputs, k, factors)
        assert pending.calls is not None and pending.d is not None
        layers = [(c.name, c.module, set(d)) for c, d in zip(pending.calls, pending.d, strict=True)]
        inputs = [c.inputs[None] for c in pending.calls]
        d_out = [{f: g[None] for f, g in d.items()} for d in pending.d]
        direct = {"log_std": {f: u[None] for f, u in pending.direct.items()}} if pending.direct else {}
        return linear_gram(layers, inputs, d_out, direct, fac, k)

    def _step_factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per parameter name, ``(F, F^2)`` ``(1, *shape)`` of the step just taken, read from the
        optimizer's state (Adam's second moments and step count) or its learning rate (SGD)."""
        opt, adam = self.optimizer, is_adam(self.optimizer)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for group in opt.param_groups:
            by_step: dict[float, list[Any]] = {}  # Adam counts steps per parameter: one factor per count
            for p in group["params"]:
                state = opt.state.get(p, {})
                if p.requires_grad and (not adam or "exp_avg_sq" in state):
                    by_step.setdefault(float(state["step"]) if adam else 0.0, []).append(p)
            for step, ps in by_step.items():
                sizes = [p.numel() for p in ps]
                if adam:
                    v = th.cat([opt.state[p]["exp_avg_sq"].reshape(1, -1) for p in ps], 1)
                    step_lr = th.tensor([[step, float(group["lr"])]], dtype=th.float64, device=v.device)
                    f = adam_step_factor(v, step_lr[:, 0], step_lr[:, 1], group["betas"], group["eps"])
                else:
                    f = sgd_step_factor(sum(sizes), group["lr"], ps[0].device)
                for p, fp, fp2 in zip(ps, f.split(sizes, 1), f.square().split(sizes, 1), strict=True):
                    out[self._names[id(p)]] = (fp.view(1, *p.shape), fp2.view(1, *p.shape))
        return out
