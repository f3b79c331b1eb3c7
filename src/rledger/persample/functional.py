"""The policy as a function of its parameters, for ``torch.func``: its loss parts, and the generic path.

:func:`policy_parts` evaluates an SB3 actor-critic policy at given parameters and returns the sums of
its loss parts (log pi, [H], V) per group of parts; both ``torch.func`` users differentiate it: the
replay of :mod:`rledger.persample.replay` (with respect to zero "probe" tensors on the Linear outputs,
vmapped over optimizer steps) and :func:`jacobian_gram` here (the generic path: with respect to every
parameter, vmapped over samples). Parts with disjoint supports can share one derivative, so a
``group`` of parts is summed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch as th
from torch import Tensor, nn

from rledger.persample.gram import Gram


@contextlib.contextmanager
def functional_calls(policy: nn.Module) -> Iterator[None]:
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


def policy_parts(
    model: nn.Module,
    params: Mapping[str, Tensor],
    obs: Any,
    act: Tensor,
    ent_part: int | None,
    groups: Sequence[Sequence[int]],
) -> Tensor:
    """``(G,)``: per group of parts, the sum over the batch of its parts at ``params`` (which replace
    the model's own for the call). The parts are log pi, then the entropy when ``ent_part`` is set
    (``-log pi`` for a distribution without an analytic entropy, as SB3's loss takes it), then V."""
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(model, dict(params)):
        values, log_prob, entropy = model.evaluate_actions(obs, act)  # type: ignore[operator]
    out = [log_prob.sum()]
    if ent_part is not None:
        out.append(entropy.sum() if entropy is not None else -log_prob.sum())
    out.append(values.sum())
    return th.stack([sum(out[f] for f in group) for group in groups])  # type: ignore[misc]


def jacobian_gram(
    policy: nn.Module,
    params: Mapping[str, Tensor],
    obs: Any,
    act: Tensor,
    k: int,
    factors: Mapping[str, Tensor | None],
    chunk: int = 64,
) -> Gram:
    """The generic path: per-sample Gram matrices ``(1, B, ...)`` of the parts from exact per-sample
    Jacobians (``torch.func.vmap(jacrev(...))`` over samples), for any feed-forward policy.

    ``params``: the parameters to differentiate (every trainable one); ``factors``: each one's step
    scale ``F`` (or None). Samples go in chunks of ``chunk`` to bound memory (``chunk * K * n_params``
    floats)."""
    from torch.func import jacrev, vmap

    ent_part = 1 if k == 3 else None
    groups = [[f] for f in range(k)]

    def parts(p: Mapping[str, Tensor], sample: Any) -> Tensor:
        o, a = th.utils._pytree.tree_map(lambda x: x.unsqueeze(0), sample)
        return policy_parts(policy, p, o, a, ent_part, groups)

    detached = {n: p.detach() for n, p in params.items()}
    jac = vmap(jacrev(parts), in_dims=(None, 0))
    batch = act.shape[0]
    g1s, gps, gp2s = [], [], []
    with functional_calls(policy):
        for start in range(0, batch, chunk):
            sub = th.utils._pytree.tree_map(lambda x, s=start: x[s : s + chunk], (obs, act))
            jacs = jac(detached, sub)  # name -> (b, K, *shape)
            b = next(iter(jacs.values())).shape[0]
            g1, gp, gp2 = (th.zeros(b, k, k, device=act.device) for _ in range(3))
            for name, jv in jacs.items():
                flat = jv.reshape(b, k, -1)
                g1 += flat @ flat.transpose(1, 2)
                f = factors.get(name)
                if f is not None:
                    pf = f.reshape(1, 1, -1)
                    gp += (flat * pf) @ flat.transpose(1, 2)
                    gp2 += (flat * pf.square()) @ flat.transpose(1, 2)
            g1s.append(g1)
            gps.append(gp)
            gp2s.append(gp2)
    return Gram(th.cat(g1s)[None], th.cat(gp2s)[None], th.cat(gps)[None][..., 0, 0])
