"""The fast path's batch engine: per-sample columns from a batched replay of the minibatch forward passes.

During ``train()`` nothing touches the policy's forward or backward pass: before each optimizer step
the parameters and the per-sample loss inputs (advantage, ratio, value, old value, return) are copied
into slot buffers, after it Adam's second moments. After many steps one batched computation
(:meth:`StepBuffers.flush`) replays every buffered minibatch's forward pass at the parameters of its own
step on a private copy of the policy and takes each part's per-sample output gradient at every Linear
layer (``d^f = d f_i / d z_i`` for f in log pi, [H], V): by hand for SB3's MLP policies (batched
matmuls forward, closed-form output gradients backward), else with ``torch.func.vmap`` over steps
(zero "probe" tensors added to the layer outputs are the differentiation variables; a Gaussian
``log_std`` expanded to one row per sample gives its per-sample gradient the same way).
With the layer inputs ``a`` of the replay and ``F = scale * P`` the Adam factor of each step, the
per-sample Gram matrices of the parts are, per Linear layer,

    G^Q[f, h] = sum_o d^f_o d^h_o (a^2 @ Q_W^T + Q_b)_o        (Q = 1: |a|^2 + 1)

and every column follows from them and the loss coefficients (:func:`rledger.geometry.loss_coefficients`,
computed here for all buffered steps at once). Clipped samples need no special case: the replay gives
every sample's score whatever its coefficient.

Holding a few large tensors instead of many small ones keeps Python's garbage collector out of the way.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from torch import Tensor, nn

MAX_BUFFER_ELEMENTS = 1 << 24
"""Upper bound on the floats held by one set of slot buffers (64 MiB); more steps than fit are flushed."""

REPLAY_CHUNK_ELEMENTS = 1 << 25
"""Floats of layer activations and their gradients per chunk of the replay (128 MiB): the buffered steps
are replayed in chunks of about this size, so peak memory does not grow with the network or batch. Large
chunks matter in the background thread: each torch call there hands the GIL over and back, which costs
the training thread tens of microseconds, so the fewer (larger) the calls, the less training slows."""

N_TERMS = 5  # advantage_used, ratio, value, old value, return


@dataclass(frozen=True)
class Parts:
    """Which parts the loss has: ``k`` of them, log pi first, the value last, the entropy at
    ``ent_part`` (None without an entropy term); ``ent_logp``: the entropy loss acts on log pi (no
    analytic entropy), so log pi's coefficient includes it."""

    k: int
    ent_part: int | None
    ent_logp: bool
    clip_vf: bool
    ent_coef: float
    vf_coef: float


class Replayer:
    """Replays minibatches at given parameters on a private copy of the policy.

    ``direct`` names the trainable parameters outside Linear layers (a Gaussian's ``log_std``);
    ``dummy`` is an (obs, actions) batch for one forward pass that finds which of the loss parts
    (log pi, entropy, value) pass through each Linear layer (the graph's structure does not depend on
    the data).
    """

    def __init__(
        self,
        policy: nn.Module,
        linear_names: list[str],
        direct: list[str],
        dummy: tuple[Any, Tensor],
        functional: Callable[[nn.Module], contextlib.AbstractContextManager[None]],
    ):
        from rledger import persample

        self.model = copy.deepcopy(policy)
        if hasattr(self.model, "optimizer"):
            self.model.optimizer = None  # type: ignore[assignment]
        modules = dict(self.model.named_modules())
        self.linear_names = linear_names
        self.linears: list[nn.Linear] = [modules[n] for n in linear_names]  # type: ignore[misc]
        with persample.LinearCapture(dict(zip(linear_names, self.linears, strict=True))) as cap:
            values, log_prob, entropy = self.model.evaluate_actions(*dummy)  # type: ignore[operator]
        sup = persample.supports([log_prob, entropy if entropy is not None else log_prob, values], cap.calls)
        by_name = {c.name: j for j, c in enumerate(cap.calls)}
        self._part_supports = [
            [by_name[n] in s if n in by_name else False for s in sup] for n in linear_names
        ]  # per layer: (log pi, entropy, value) pass through it
        self.model.requires_grad_(False)
        self.direct = direct
        self.functional = functional
        self.parts: Parts | None = None
        self.supports: list[set[int]] = []
        self._probes: list[Tensor] = []
        self._inputs: list[Tensor | None] = []
        self._slot = {id(m): j for j, m in enumerate(self.linears)}
        for m in self.linears:
            m.register_forward_hook(self._hook)
        self.plan = _mlp_plan(self.model, self.linears, direct)

    def set_parts(self, parts: Parts) -> None:
        """Index the layers' supports by the loss's parts, and group the parts whose supports do not
        overlap (one backward pass of their sum gives each its own gradients)."""
        from rledger import persample

        self.parts = parts
        self.supports = []
        for logp, ent, value in self._part_supports:
            s = set()
            if logp:
                s.add(0)
            if ent and parts.ent_part is not None:
                s.add(parts.ent_part)
            if value:
                s.add(parts.k - 1)
            self.supports.append(s)
        # the direct parameters (log_std) count as one more layer, used by the actor's parts
        self.direct_support = {0} | ({parts.ent_part} if parts.ent_part is not None else set())
        layers = [*self.supports, self.direct_support if self.direct else set()]
        per_part = [{j for j, s in enumerate(layers) if f in s} for f in range(parts.k)]
        self.groups = persample.disjoint_groups(per_part)
        self.group_of = {f: g for g, members in enumerate(self.groups) for f in members}

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        if not self._probes:
            return None
        j = self._slot[id(module)]
        self._inputs[j] = args[0]
        return output + self._probes[j]

    def output_grads(
        self, params: dict[str, Tensor], obs: Any, act: Tensor
    ) -> tuple[list[Tensor], list[dict[int, Tensor]], dict[str, dict[int, Tensor]]]:
        """For ``S`` steps of ``B`` samples (params ``(S, ...)``, obs/act ``(S, B, ...)``): each Linear
        call's inputs ``(S, B, in)``; per layer, each supporting part's output gradients
        ``(S, B, out)``; per direct parameter, each supporting part's per-sample gradients
        ``(S, B, n)``. Call :meth:`set_parts` first.

        SB3's MLP policies (``MlpExtractor`` with Tanh or ReLU, a categorical or diagonal Gaussian
        action distribution, parameter-free features extractors) take a hand-written batched forward
        and backward pass (:meth:`_mlp_grads`); any other policy of the linear path the
        ``torch.func`` replay."""
        assert self.parts is not None, "call set_parts first"
        if self.plan is not None:
            return self._mlp_grads(params, obs, act, self.parts.k, self.parts.ent_part)
        return self._func_grads(params, obs, act, self.parts.ent_part)

    def _func_grads(
        self, params: dict[str, Tensor], obs: Any, act: Tensor, ent_part: int | None
    ) -> tuple[list[Tensor], list[dict[int, Tensor]], dict[str, dict[int, Tensor]]]:
        from torch.func import jacrev, vmap
        from torch.nn.utils.stateless import _reparametrize_module

        model = self.model
        steps, batch = act.shape[0], act.shape[1]
        fixed = {n: p for n, p in params.items() if n not in self.direct}
        direct = {n: params[n][:, None].expand(steps, batch, *params[n].shape[1:]) for n in self.direct}
        probes = [th.zeros(steps, batch, m.out_features) for m in self.linears]

        def parts(
            probe: list[Tensor], per_sample: dict[str, Tensor], p: dict[str, Tensor], o: Any, a: Tensor
        ):  # noqa: ANN202
            self._probes = probe
            self._inputs = [None] * len(self.linears)
            with _reparametrize_module(model, {**p, **per_sample}):
                values, log_prob, entropy = model.evaluate_actions(o, a)  # type: ignore[operator]
            out = [log_prob.sum()]
            if ent_part is not None:
                out.append(entropy.sum() if entropy is not None else -log_prob.sum())
            out.append(values.sum())
            sums = th.stack([sum(out[f] for f in group) for group in self.groups])  # type: ignore[misc]
            return sums, [x if x is not None else th.zeros(()) for x in self._inputs]

        with self.functional(model), th.enable_grad():
            (g_out, g_direct), inputs = vmap(jacrev(parts, argnums=(0, 1), has_aux=True))(
                probes, direct, fixed, obs, act
            )
        self._probes, self._inputs = [], []
        d = [{f: g_out[j][:, self.group_of[f]] for f in sup} for j, sup in enumerate(self.supports)]
        u = {
            n: {f: g_direct[n][:, self.group_of[f]].reshape(steps, batch, -1) for f in self.direct_support}
            for n in self.direct
        }
        return inputs, d, u

    def _weights(self, params: dict[str, Tensor], j: int, steps: int) -> tuple[Tensor, Tensor | None]:
        """Layer ``j``'s weight ``(S, out, in)`` and bias ``(S, out)`` at each step (a parameter the
        optimizer does not train keeps its value)."""
        name, module = self.linear_names[j], self.linears[j]
        w = params.get(f"{name}.weight")
        if w is None:
            w = module.weight.detach().expand(steps, *module.weight.shape)
        b = params.get(f"{name}.bias")
        if b is None and module.bias is not None:
            b = module.bias.detach().expand(steps, *module.bias.shape)
        return w, b

    def _mlp_grads(
        self, params: dict[str, Tensor], obs: Any, act: Tensor, k: int, ent_part: int | None
    ) -> tuple[list[Tensor], list[dict[int, Tensor]], dict[str, dict[int, Tensor]]]:
        """The replay of an SB3 MLP policy by hand: batched matmuls at each step's weights forward,
        and the closed-form output gradients of log pi, the entropy and the value backward."""
        plan = self.plan
        assert plan is not None
        steps, batch = act.shape[0], act.shape[1]
        inputs: list[Tensor] = [th.zeros(()) for _ in self.linears]
        d: list[dict[int, Tensor]] = [{} for _ in self.linears]
        with th.no_grad():
            flat = th.utils._pytree.tree_map(lambda x: x.reshape(steps * batch, *x.shape[2:]), obs)
            feats = self.model.extract_features(flat)  # type: ignore[operator]
            pi_f, vf_f = feats if isinstance(feats, tuple) else (feats, feats)

            def linear(j: int, h: Tensor) -> Tensor:  # layer j at each step's weights; keeps its input
                inputs[j] = h
                w, b = self._weights(params, j, steps)
                return (
                    th.bmm(h, w.transpose(1, 2))
                    if b is None
                    else th.baddbmm(b[:, None], h, w.transpose(1, 2))
                )

            def forward(layers: list[tuple[int, str]], head: int, x: Tensor) -> tuple[Tensor, list[Tensor]]:
                h, outs = x.reshape(steps, batch, -1), []
                for j, kind in layers:
                    z = linear(j, h)
                    h = th.tanh(z) if kind == "tanh" else th.relu(z)
                    outs.append(h)
                return linear(head, h), outs

            def backward(
                layers: list[tuple[int, str]], head: int, outs: list[Tensor], g: dict[int, Tensor]
            ) -> None:
                """``g``: part -> its gradient at the head's output ``(S, B, n)``; records every
                layer's output gradient of the parts in that layer's support."""
                parts = sorted(g)
                n_p = len(parts)
                cur = th.cat([g[f] for f in parts], 1)  # (S, P * B, n)
                order = [j for j, _ in layers] + [head]  # the Linear calls, input to output
                for idx in range(len(order) - 1, -1, -1):
                    j = order[idx]
                    if idx < len(layers):  # through the activation that produced the next layer's input
                        y = outs[idx] if n_p == 1 else outs[idx].repeat(1, n_p, 1)
                        if layers[idx][1] == "tanh":
                            cur = cur * th.addcmul(th.ones_like(y), y, y, value=-1.0)  # 1 - y^2
                        else:
                            cur = cur * (y > 0)
                    for x, f in enumerate(parts):
                        if f in self.supports[j]:
                            d[j][f] = cur[:, x * batch : (x + 1) * batch]
                    if idx > 0:
                        w, _ = self._weights(params, j, steps)
                        cur = th.bmm(cur, w)

            out, pi_outs = forward(plan.actor, plan.action, pi_f)
            direct: dict[str, dict[int, Tensor]] = {}
            if plan.gaussian:
                std = params["log_std"].exp()[:, None] if "log_std" in params else self.model.log_std.exp()  # type: ignore[operator]
                z = (act.reshape(steps, batch, -1) - out) / std
                g_out = {0: z / std}
                u = {0: z * z - 1.0}
                if ent_part is not None:
                    g_out[ent_part] = th.zeros_like(out)  # the entropy does not depend on the mean
                    u[ent_part] = th.ones_like(z)
                if "log_std" in self.direct:
                    direct["log_std"] = {f: v for f, v in u.items() if f in self.direct_support}
            else:
                logp = th.log_softmax(out, -1)
                prob = logp.exp()
                g_out = {0: th.nn.functional.one_hot(act.long(), out.shape[-1]).to(out.dtype) - prob}
                if ent_part is not None:
                    ent = -(prob * logp).sum(-1, keepdim=True)
                    g_out[ent_part] = -prob * (logp + ent)
            backward(plan.actor, plan.action, pi_outs, g_out)
            value, vf_outs = forward(plan.critic, plan.value, vf_f)
            backward(plan.critic, plan.value, vf_outs, {k - 1: th.ones_like(value)})
        return inputs, d, direct


@dataclass(frozen=True)
class _MlpPlan:
    """An SB3 MLP policy's layers in order: (Linear index, activation) pairs, then the head."""

    actor: list[tuple[int, str]]
    action: int
    critic: list[tuple[int, str]]
    value: int
    gaussian: bool


def _mlp_plan(model: nn.Module, linears: list[nn.Linear], direct: list[str]) -> _MlpPlan | None:
    """The plan of :meth:`Replayer._mlp_grads` for SB3's MLP policies, or None for any other."""
    from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
    from stable_baselines3.common.torch_layers import MlpExtractor

    dist = getattr(model, "action_dist", None)
    if type(dist) not in (CategoricalDistribution, DiagGaussianDistribution):
        return None
    if type(getattr(model, "mlp_extractor", None)) is not MlpExtractor:
        return None
    extractors = [
        getattr(model, n, None)
        for n in ("features_extractor", "pi_features_extractor", "vf_features_extractor")
    ]
    if any(e is not None and any(True for _ in e.parameters()) for e in extractors):
        return None
    if set(direct) - {"log_std"}:
        return None
    index = {id(m): j for j, m in enumerate(linears)}

    def chain(seq: nn.Module) -> list[tuple[int, str]] | None:
        mods = list(seq.children())
        if len(mods) % 2:
            return None
        out = []
        for lin, act in zip(mods[::2], mods[1::2], strict=True):
            kind = {nn.Tanh: "tanh", nn.ReLU: "relu"}.get(type(act))
            if type(lin) is not nn.Linear or id(lin) not in index or kind is None:
                return None
            out.append((index[id(lin)], kind))
        return out

    actor = chain(model.mlp_extractor.policy_net)  # type: ignore[union-attr]
    critic = chain(model.mlp_extractor.value_net)  # type: ignore[union-attr]
    heads = [getattr(model, n, None) for n in ("action_net", "value_net")]
    if actor is None or critic is None or any(type(h) is not nn.Linear or id(h) not in index for h in heads):
        return None
    if heads[1].out_features != 1:  # type: ignore[union-attr]
        return None
    return _MlpPlan(
        actor, index[id(heads[0])], critic, index[id(heads[1])], type(dist) is DiagGaussianDistribution
    )


class StepBuffers:
    """Slot buffers for up to ``capacity`` optimizer steps of minibatches of ``batch`` samples."""

    def __init__(
        self,
        params: list[nn.Parameter],
        names: list[str],
        batch: int,
        steps_hint: int,
    ):
        self.params, self.names, self.batch = params, names, batch
        n_params = sum(p.numel() for p in params)
        per_step = 2 * n_params + batch * (N_TERMS + 2)
        self.capacity = int(max(1, min(steps_hint, MAX_BUFFER_ELEMENTS // max(per_step, 1))))
        # parameters and second moments of each step, all parameters flat in one row per step
        self.p = th.zeros(self.capacity, n_params)
        self.v = th.zeros(self.capacity, n_params)
        self.terms = th.zeros(self.capacity, N_TERMS, batch)  # each step's loss inputs
        self._p_rows, self._v_rows, self._term_rows = self.p.unbind(0), self.v.unbind(0), self.terms.unbind(0)
        self._sources = [p.detach().view(-1) for p in params]  # views of the live parameters
        self._sizes = [p.numel() for p in params]
        self._shapes = [tuple(p.shape) for p in params]
        # clipping bounds (1 - eps, 1 + eps) and (-eps_vf, eps_vf), in float64 as SB3 has them; constant
        # within a train() call, whose steps are the only ones a fill of the buffers holds
        self.bounds = (0.0, 0.0, 0.0, 0.0)
        # per step, kept by reference (train() creates them afresh for each minibatch and never changes
        # them afterwards) and stacked by gather(): (t, env) and the scalars
        self._t: list[np.ndarray] = []
        self._env: list[np.ndarray] = []
        self._scalars: list[tuple[float, ...]] = []  # rollout, epoch, minibatch, Adam step, lr
        self._grad_norms: list[Tensor] = []  # clip_grad_norm_'s result (0-d), the clip factor from it
        self.t = np.zeros((0, batch), dtype=np.int32)  # (m, B), stacked by gather()
        self.env = np.zeros((0, batch), dtype=np.int16)
        self.keys = np.zeros((0, 3), dtype=np.int64)
        self.step = self.lr = np.zeros(0, dtype=np.float64)
        self.clip = np.zeros(0, dtype=np.float32)
        self.m = 0
        self.busy = False  # handed to a background flush; not to be written until it is done
        self.future: Any = None  # that flush's future

    @property
    def full(self) -> bool:
        return self.m == self.capacity

    def put_before(self, terms: list[Tensor], clip_range: float, clip_range_vf: float | None) -> None:
        """Before the step: the parameters it starts from and its ``N_TERMS`` loss inputs ``(B,)``."""
        m = self.m
        th.cat(self._sources, out=self._p_rows[m])
        with th.no_grad():
            th.stack(terms, out=self._term_rows[m])
        if m == 0:
            vf = clip_range_vf if clip_range_vf is not None else 0.0
            self.bounds = (1 - clip_range, 1 + clip_range, -vf, vf)

    def put_after(
        self, v: list[Tensor], step: float, lr: float, grad_norm: Tensor, base: dict[str, Any]
    ) -> None:
        """After the step: Adam's second moments (flat views, in the parameters' order), the total
        gradient norm ``clip_grad_norm_`` returned (kept by reference) and the rest."""
        th.cat(v, out=self._v_rows[self.m])
        self._t.append(base["t"])
        self._env.append(base["env"])
        self._grad_norms.append(grad_norm)
        self._scalars.append((base["rollout"], base["epoch"], base["minibatch"], step, lr))
        self.m += 1

    def gather(
        self, fetch: Callable[[np.ndarray], tuple[Any, Tensor]], max_grad_norm: float
    ) -> tuple[Any, Tensor]:
        """The buffered steps' observations and actions ``(m, B, ...)``, from the rollout buffer
        (``fetch`` maps (t, env) pairs to them), and their indices, scalars and clip factors stacked
        for :meth:`flush`. Runs on the training thread, before the rollout buffer is refilled."""
        m, b = self.m, self.batch
        scalars = np.array(self._scalars, dtype=np.float64)
        self.keys = scalars[:, :3].astype(np.int64)
        self.step, self.lr = scalars[:, 3], scalars[:, 4]
        self.clip = clip_coefs(th.stack(self._grad_norms), max_grad_norm).numpy()
        self.t, self.env = np.stack(self._t), np.stack(self._env)
        self._t, self._env, self._scalars, self._grad_norms = [], [], [], []
        t = self.t.reshape(-1).astype(np.int64)
        env = self.env.reshape(-1).astype(np.int64)
        obs, act = fetch(np.stack([t, env], 1))
        return th.utils._pytree.tree_map(lambda x: x.reshape(m, b, *x.shape[1:]), (obs, act))

    def flush(
        self,
        replayer: Replayer,
        parts: Parts,
        eps: float,
        betas: tuple[float, float],
        obs: Any,
        act: Tensor,
    ) -> dict[str, np.ndarray]:
        """Columns of the buffered steps (``m * batch`` rows, in recording order), given their
        observations and actions from :meth:`gather`; empties the buffers (also on error)."""
        try:
            return self._flush(replayer, parts, eps, betas, obs, act)
        finally:
            self.m = 0
            self.busy = False

    def _flush(
        self, replayer: Replayer, parts: Parts, eps: float, betas: tuple[float, float], obs: Any, act: Tensor
    ) -> dict[str, np.ndarray]:
        m, b = self.m, self.batch
        replayer.set_parts(parts)
        width = sum(ly.in_features + (parts.k + 2) * ly.out_features for ly in replayer.linears)
        chunk = max(1, REPLAY_CHUNK_ELEMENTS // max(1, b * width))
        pieces = []
        for lo in range(0, m, chunk):
            hi = min(m, lo + chunk)
            sub_obs, sub_act = th.utils._pytree.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi], (obs, act))
            pieces.append(self._chunk_columns(replayer, parts, eps, betas, lo, hi, sub_obs, sub_act))
        cols = {name: th.cat([p[name] for p in pieces]) for name in pieces[0]}
        out = {name: col.reshape(-1).numpy().copy() for name, col in cols.items()}
        out["t"] = self.t.reshape(-1)
        out["env"] = self.env.reshape(-1)
        for j, key in enumerate(("rollout", "epoch", "minibatch")):
            out[key] = np.repeat(self.keys[:, j], b)
        return out

    # ------------------------------------------------------------------ batch
    def _chunk_columns(
        self,
        replayer: Replayer,
        parts: Parts,
        eps: float,
        betas: tuple[float, float],
        lo: int,
        hi: int,
        obs: Any,
        act: Tensor,
    ) -> dict[str, Tensor]:
        from rledger.geometry import LossTerms, loss_coefficients

        k = parts.k
        terms = self.terms[lo:hi]
        bounds = th.tensor([self.bounds], dtype=th.float64)
        cr, crv = bounds[:, :2], (bounds[:, 2:] if parts.clip_vf else None)
        coef, alpha, ent_part, ent_logp, clipped = loss_coefficients(
            LossTerms(terms[:, 0], terms[:, 1], cr, terms[:, 2], terms[:, 3], terms[:, 4], crv,
                      parts.ent_coef, parts.vf_coef),
            not parts.ent_logp,
        )  # fmt: skip
        params = self._per_param(self.p[lo:hi])
        inputs, d_out, d_direct = replayer.output_grads(params, obs, act)
        fac = self._factors(lo, hi, eps, betas)
        s, b = hi - lo, self.batch
        g1 = th.zeros(s, b, k, k)
        gp2 = th.zeros(s, b, k, k)
        gp00 = th.zeros(s, b)
        for j, ly in enumerate(replayer.linears):
            sup = sorted(replayer.supports[j])
            if not sup:
                continue
            w1, q2, q1 = _layer_weights(
                replayer.linear_names[j], ly, inputs[j].square(), fac, with_f=0 in sup
            )
            d = d_out[j]  # part -> (S, B, out)
            for x, f in enumerate(sup):
                for h in sup[x:]:
                    dd = d[f] * d[h]
                    g1[..., f, h] += dd.sum(-1) * w1
                    gp2[..., f, h] += (dd * q2).sum(-1)
                    if f == h == 0 and q1 is not None:
                        gp00 += (dd * q1).sum(-1)
        for name in replayer.direct:
            u = d_direct[name]  # part -> (S, B, n)
            sup = sorted(u)
            f1, f2 = fac.get(name, (None, None))
            for x, f in enumerate(sup):
                for h in sup[x:]:
                    uu = u[f] * u[h]
                    g1[..., f, h] += uu.sum(-1)
                    if f2 is not None:
                        gp2[..., f, h] += (uu * f2.reshape(s, 1, -1)).sum(-1)
            if f1 is not None:
                gp00 += (u[0].square() * f1.reshape(s, 1, -1)).sum(-1)
        g1 = g1 + th.triu(g1, 1).transpose(-1, -2)
        gp2 = gp2 + th.triu(gp2, 1).transpose(-1, -2)
        clip = th.from_numpy(self.clip[lo:hi])[:, None]
        return {
            "advantage_used": terms[:, 0],
            "ratio": terms[:, 1],
            "clipped": clipped,
            **columns(g1, gp2, gp00, coef, alpha, ent_part, ent_logp, clip),
        }

    def _factors(
        self, lo: int, hi: int, eps: float, betas: tuple[float, float]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``F = scale * P`` and ``F**2`` per parameter (by name) and step, ``(S, *shape)``."""
        beta1, beta2 = betas
        step, lr = th.from_numpy(self.step[lo:hi]), th.from_numpy(self.lr[lo:hi])
        scale = (lr * (1 - beta1) / (1 - beta1**step)).float()
        bc2_sqrt = th.sqrt(1 - beta2**step).float()
        # P = 1 / (sqrt(v) / sqrt(1 - beta2^k) + eps): the denominator torch's Adam divides by
        den = self.v[lo:hi].sqrt()
        den.div_(bc2_sqrt[:, None]).add_(eps)
        f = th.div(scale[:, None], den, out=den)
        f1, f2 = self._per_param(f), self._per_param(f.square())
        return {name: (f1[name], f2[name]) for name in self.names}

    def _per_param(self, flat: Tensor) -> dict[str, Tensor]:
        """Rows of flat parameter-shaped values ``(S, n_params)`` as ``name -> (S, *shape)`` views."""
        # one split, then a view only where the shape has two or more dimensions (few torch calls:
        # each costs the training thread a GIL hand-off when this runs in the background thread)
        parts = flat.split(self._sizes, dim=1)
        return {
            name: part if len(shape) == 1 else part.view(flat.shape[0], *shape)
            for name, part, shape in zip(self.names, parts, self._shapes, strict=True)
        }


def _layer_weights(
    name: str, ly: nn.Linear, a2: Tensor, fac: dict[str, tuple[Tensor, Tensor]], with_f: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per sample and output unit, ``w1 = |a|^2 + 1``, ``q2 = a^2 @ (F^2)^T + F_b^2`` and, when asked,
    ``q1 = a^2 @ F^T + F_b``; a parameter the optimizer does not train adds nothing."""
    s, b = a2.shape[0], a2.shape[1]
    fw = fac.get(f"{name}.weight")
    fb = fac.get(f"{name}.bias") if ly.bias is not None else None
    w1 = a2.sum(-1) if fw is not None else th.zeros(s, b)
    if fb is not None:
        w1 += 1.0

    def q(i: int) -> Tensor:  # a^2 @ Q_W^T + Q_b with Q = F (i = 0) or F^2 (i = 1)
        if fw is None:
            zeros = th.zeros(s, b, ly.out_features)
            return zeros if fb is None else zeros + fb[i][:, None, :]
        if fb is None:
            return th.bmm(a2, fw[i].transpose(1, 2))
        return th.baddbmm(fb[i][:, None, :], a2, fw[i].transpose(1, 2))

    return w1, q(1), (q(0) if with_f else None)


def clip_coefs(grad_norms: Tensor, max_norm: float) -> Tensor:
    """The factor ``clip_grad_norm_`` scaled the gradients by, ``min(1, max_norm / (norm + 1e-6))``,
    from the total norms it returned, computed as torch computes it (float32, same expression);
    elementwise, so one call gives many steps' factors, bitwise as one call per step would (tested)."""
    with th.no_grad():
        return th.clamp(max_norm / (grad_norms + 1e-6), max=1.0)


def columns(
    g1: Tensor,
    gp2: Tensor,
    gp00: Tensor,
    c: Tensor,
    alpha: Tensor,
    ent_part: int | None,
    ent_logp: Tensor | None,
    clip: Tensor | float,
) -> dict[str, Tensor]:
    """The per-sample columns (see the schema) from the per-sample Gram matrices ``(..., K, K)`` of
    the parts (``g1``: Q = 1, ``gp2``: Q = F^2; ``gp00``: ``<s, F s>``), the loss coefficients
    ``(..., K)``, log pi's coefficient in the policy loss ``alpha`` and the global clipping factor."""
    score = g1[..., 0, 0].clamp_min(0).sqrt()
    pg = alpha.abs() * score
    if ent_part is not None:
        ent = c[..., ent_part].abs() * g1[..., ent_part, ent_part].clamp_min(0).sqrt()
    elif ent_logp is not None:
        ent = ent_logp.abs() * score
    else:
        ent = th.zeros_like(score)
    vf = c[..., -1].abs() * g1[..., -1, -1].clamp_min(0).sqrt()
    total = th.einsum("...k,...kl,...l->...", c, g1, c).clamp_min(0).sqrt()
    adam = clip * th.einsum("...k,...kl,...l->...", c, gp2, c).clamp_min(0).sqrt()
    self_reinf = -clip * alpha * gp00
    return {
        "score_norm": score,
        "pg_grad_norm": pg,
        "entropy_grad_norm": ent,
        "value_grad_norm": vf,
        "loss_grad_norm": total,
        "adam_update_norm": adam,
        "self_reinforcement": self_reinf,
    }
