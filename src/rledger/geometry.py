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
        policy_loss: Tensor,
        entropy_loss: Tensor,
        value_loss: Tensor,
        ent_coef: float,
        vf_coef: float,
    ) -> _Pending:
        """Per-sample loss coefficients and, on the fast path, Linear output gradients.

        Must run before ``loss.backward()`` frees the graph. Touches no ``.grad`` and no RNG.
        """
        parts: list[Tensor] = [log_prob]
        outputs: list[Tensor] = [policy_loss]
        ent_part = None
        ent_coef_logp = None
        if ent_coef != 0 and entropy is not None:
            ent_part = 1
            parts.append(entropy)
            outputs.append(ent_coef * entropy_loss)
        parts.append(values)
        if vf_coef != 0:
            outputs.append(vf_coef * value_loss)
        # one backward over the scalar tail of the loss: d(loss terms)/d(log pi, H, V) per sample
        coefs = list(
            th.autograd.grad(outputs, parts, retain_graph=True, allow_unused=True, materialize_grads=True)
        )
        alpha = coefs[0]
        if ent_coef != 0 and entropy is None:
            ent_coef_logp = th.autograd.grad(ent_coef * entropy_loss, log_prob, retain_graph=True)[0]
            coefs[0] = alpha + ent_coef_logp
        pending = _Pending(th.stack(coefs, 1).detach(), alpha.detach(), ent_coef_logp, ent_part)
        if self.path == "linear":
            assert cap is not None
            calls = cap.calls
            if self._support is None:
                self._support = persample.supports(parts, calls)
            pending.calls = calls
            pending.d = persample.output_grads(parts, calls, self._support)
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

    def after_step(
        self, pending: _Pending, optimizer: th.optim.Optimizer, clip_coef: Tensor
    ) -> dict[str, Tensor]:
        """The per-sample columns, using the optimizer state that the step just produced."""
        k = pending.coef.shape[1]
        batch = pending.coef.shape[0]
        precond = _fresh_step_factor(optimizer)
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
        return _columns(gram, pending, clip_coef)

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


def _columns(gram: persample.GramSet, pending: _Pending, clip_coef: Tensor) -> dict[str, Tensor]:
    c = pending.coef
    g1 = gram.g1.clamp_min(0)
    score_sq = g1[:, 0, 0]
    score = score_sq.sqrt()
    pg = pending.alpha.abs() * score
    if pending.ent_part is not None:
        ent = c[:, pending.ent_part].abs() * g1[:, pending.ent_part, pending.ent_part].sqrt()
    elif pending.ent_coef_logp is not None:
        ent = pending.ent_coef_logp.abs() * score
    else:
        ent = th.zeros_like(score)
    vf = c[:, -1].abs() * g1[:, -1, -1].sqrt()
    total = persample.quad(gram.g1, c).clamp_min(0).sqrt()
    assert gram.gp is not None and gram.gp2 is not None
    adam = clip_coef * persample.quad(gram.gp2, c).clamp_min(0).sqrt()
    self_reinf = -clip_coef * pending.alpha * gram.gp[:, 0, 0]
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
