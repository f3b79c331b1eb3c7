"""The replay: every buffered minibatch's forward pass again, at the parameters of its own optimizer step.

:class:`Replayer` runs ``S`` steps of ``B`` samples at once on a private copy of the policy and returns
each loss part's per-sample gradient at every Linear layer's output (``d^f = d f_i / d z_i`` for f in
log pi, [H], V), the layers' inputs, and the per-sample gradients of parameters outside Linear layers
(a Gaussian ``log_std``): by hand for SB3's MLP policies (batched matmuls forward, closed-form output
gradients backward: ``d log pi / d logits = onehot(a) - p``, ``d H / d logits = -p (log p + H)``,
``d log pi / d mu = (a - mu) / sigma^2``, through ``1 - y^2`` for tanh and ``y > 0`` for ReLU), else
with ``torch.func.vmap(jacrev(...))`` over steps of :func:`rledger.persample.functional.policy_parts`
(zero "probe" tensors added to the layer outputs are the differentiation variables; a Gaussian
``log_std`` expanded to one row per sample gives its per-sample gradient the same way).
:mod:`rledger.persample.gram` turns these into Gram matrices.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch as th
from torch import Tensor, nn

from rledger.persample.functional import functional_calls, policy_parts
from rledger.persample.gram import LayerCapture, disjoint_groups, supports
from rledger.persample.loss import Parts


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
    ):
        self.model = copy.deepcopy(policy)
        if hasattr(self.model, "optimizer"):
            self.model.optimizer = None  # type: ignore[assignment]
        modules = dict(self.model.named_modules())
        self.linear_names = linear_names
        self.linears: list[nn.Linear] = [modules[n] for n in linear_names]  # type: ignore[misc]
        with LayerCapture(dict(zip(linear_names, self.linears, strict=True))) as cap:
            values, log_prob, entropy = self.model.evaluate_actions(*dummy)  # type: ignore[operator]
        sup = supports([log_prob, entropy if entropy is not None else log_prob, values], cap.calls)
        by_name = {c.name: j for j, c in enumerate(cap.calls)}
        self._part_supports = [
            [by_name[n] in s if n in by_name else False for s in sup] for n in linear_names
        ]  # per layer: (log pi, entropy, value) pass through it
        self.model.requires_grad_(False)
        self.direct = direct
        self.parts: Parts | None = None
        self.supports: list[set[int]] = []
        self._probes: list[Tensor] = []
        self._inputs: list[Tensor | None] = []
        self._slot = {id(m): j for j, m in enumerate(self.linears)}
        for m in self.linears:
            m.register_forward_hook(self._hook)
        self.plan = mlp_plan(self.model, self.linears, direct)

    def set_parts(self, parts: Parts) -> None:
        """Index the layers' supports by the loss's parts, and group the parts whose supports do not
        overlap (one backward pass of their sum gives each its own gradients)."""
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
        self.groups = disjoint_groups(per_part)
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

    def log_probs(self, params: dict[str, Tensor], obs: Any, act: Tensor) -> Tensor:
        """``(S, B)``: log pi of ``S`` steps of ``B`` (observation, action) pairs, each step at its own
        parameters ``(S, ...)`` (trained parameters not given keep their values)."""
        from torch.func import vmap
        from torch.nn.utils.stateless import _reparametrize_module

        model = self.model

        def one(p: dict[str, Tensor], o: Any, a: Tensor) -> Tensor:
            with _reparametrize_module(model, p):
                _, log_prob, _ = model.evaluate_actions(o, a)  # type: ignore[operator]
            return log_prob

        with functional_calls(model), th.no_grad():
            return vmap(one)(params, obs, act)

    def _func_grads(
        self, params: dict[str, Tensor], obs: Any, act: Tensor, ent_part: int | None
    ) -> tuple[list[Tensor], list[dict[int, Tensor]], dict[str, dict[int, Tensor]]]:
        from torch.func import jacrev, vmap

        model = self.model
        steps, batch = act.shape[0], act.shape[1]
        fixed = {n: p for n, p in params.items() if n not in self.direct}
        direct = {n: params[n][:, None].expand(steps, batch, *params[n].shape[1:]) for n in self.direct}
        probes = [th.zeros(steps, batch, m.out_features, device=act.device) for m in self.linears]

        def parts(
            probe: list[Tensor], per_sample: dict[str, Tensor], p: dict[str, Tensor], o: Any, a: Tensor
        ) -> tuple[Tensor, list[Tensor]]:
            self._probes = probe
            self._inputs = [None] * len(self.linears)
            sums = policy_parts(model, {**p, **per_sample}, o, a, ent_part, self.groups)
            return sums, [x if x is not None else th.zeros((), device=a.device) for x in self._inputs]

        with functional_calls(model), th.enable_grad():
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
        inputs: list[Tensor] = [th.zeros((), device=act.device) for _ in self.linears]
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
class MlpPlan:
    """An SB3 MLP policy's layers in order: (Linear index, activation) pairs, then the head."""

    actor: list[tuple[int, str]]
    action: int
    critic: list[tuple[int, str]]
    value: int
    gaussian: bool


def mlp_plan(model: nn.Module, linears: list[nn.Linear], direct: list[str]) -> MlpPlan | None:
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
    return MlpPlan(
        actor, index[id(heads[0])], critic, index[id(heads[1])], type(dist) is DiagGaussianDistribution
    )
