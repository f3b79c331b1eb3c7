"""Per-sample gradient geometry: exact, batched, with no per-sample Python loop.

The loss of a PPO minibatch is a sum of per-sample terms, and each term depends on the network only
through a few per-sample scalars, the *parts*: ``log pi(a_i|s_i)``, the entropy ``H_i`` and the value
``V_i``. Sample ``i``'s gradient is therefore ``g_i = sum_f c_i^f grad f_i`` with per-sample
coefficients ``c_i^f``. Everything the ledger records follows from the per-sample Gram matrices

    G_i^Q[f, h] = <grad f_i, Q * grad h_i>        for Q in {1, P, P^2}

where ``P`` is an elementwise (diagonal) preconditioner such as Adam's ``1 / (sqrt(v_hat) + eps)``.

Two exact ways to get them:

* :func:`linear_blocks` + :func:`gram_from_blocks` (Linear layers). For a Linear layer ``z = a W^T + b``, sample ``i``'s weight gradient
  of a part ``f`` is the outer product ``d_i^f a_i^T`` with ``d_i^f = df_i/dz_i``, so
  ``<d^f a^T, Q (d^h a^T)> = (d^f * d^h)^T Q_W (a^2)`` and the bias adds ``(d^f * d^h) . Q_b``:
  one backward pass to the layer outputs per group of parts gives every sample's Gram matrix.
* :func:`jacobian_gram` (generic path). Full per-sample Jacobians of the parts from
  ``torch.func.vmap(jacrev(...))``, in chunks; exact for any feed-forward module.

This module knows nothing of stable-baselines3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class GramSet:
    """Per-sample Gram matrices of the parts, each of shape ``(B, K, K)``.

    ``g1`` uses Q = 1, ``gp`` uses Q = P and ``gp2`` uses Q = P^2 (``gp``/``gp2`` are ``None`` when no
    preconditioner was given).
    """

    g1: Tensor
    gp: Tensor | None
    gp2: Tensor | None


def empty_gram(batch: int, k: int, with_precond: bool, dtype: torch.dtype = torch.float32) -> GramSet:
    z = torch.zeros(batch, k, k, dtype=dtype)
    return GramSet(z, z.clone() if with_precond else None, z.clone() if with_precond else None)


@dataclass
class LinearCall:
    """One call of a Linear layer recorded during a forward pass."""

    name: str
    module: nn.Linear
    inputs: Tensor  # (B, in), detached
    output: Tensor | None  # (B, out), in the autograd graph; dropped once its gradients are taken


@dataclass
class LinearCapture:
    """Forward hooks on Linear layers that record each call's input and output.

    Use as a context manager around exactly one forward pass; the hooks are removed on exit, even on
    error, so they never outlive the pass.
    """

    modules: Mapping[str, nn.Linear]
    calls: list[LinearCall] = field(default_factory=list)
    _handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    def __enter__(self) -> LinearCapture:
        self.calls = []
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.calls.append(LinearCall(name, module, args[0].detach(), output))  # type: ignore[arg-type]

        return hook

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def graph_nodes(t: Tensor) -> set[int]:
    """ids of every autograd node that ``t`` depends on."""
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(n for n, _ in node.next_functions)
    return seen


def supports(parts: Sequence[Tensor], calls: Sequence[LinearCall]) -> list[set[int]]:
    """For each part, the indices of the recorded calls whose output it depends on."""
    out = []
    for p in parts:
        nodes = graph_nodes(p)
        out.append({j for j, c in enumerate(calls) if c.output is not None and id(c.output.grad_fn) in nodes})
    return out


def disjoint_groups(support: Sequence[set[int]]) -> list[list[int]]:
    """Greedily group parts whose supports do not overlap, so one backward pass serves a group."""
    groups: list[list[int]] = []
    covered: list[set[int]] = []
    for f, s in enumerate(support):
        for g, cov in zip(groups, covered, strict=True):
            if not (cov & s):
                g.append(f)
                cov |= s
                break
        else:
            groups.append([f])
            covered.append(set(s))
    return groups


def output_grads(
    parts: Sequence[Tensor], calls: Sequence[LinearCall], support: Sequence[set[int]]
) -> list[dict[int, Tensor]]:
    """``d[j][f] = d(sum_i f_i) / d z_j`` for every recorded call ``j`` in part ``f``'s support.

    Per-sample independence of the forward pass makes row ``i`` of it sample ``i``'s own output
    gradient. Parts with disjoint supports share one backward pass. The graph is retained and no
    parameter's ``.grad`` is touched.
    """
    d: list[dict[int, Tensor]] = [{} for _ in calls]
    for group in disjoint_groups(support):
        targets = sorted(set().union(*(support[f] for f in group)))
        if not targets:
            continue
        total = sum(parts[f].sum() for f in group)
        grads = torch.autograd.grad(
            total,
            [calls[j].output for j in targets],  # type: ignore[misc]
            retain_graph=True,
            allow_unused=True,
        )
        for j, gj in zip(targets, grads, strict=True):
            if gj is None:
                continue
            for f in group:
                if j in support[f]:
                    d[j][f] = gj
    return d


@dataclass
class Block:
    """Per-sample gradients of the parts over a group of parameter entries, in factored form.

    ``d`` is ``(B, K, n)``; the per-sample Gram matrices are ``sum_n d[:, f, n] d[:, h, n] q[:, n]``
    with ``q`` = ``w1`` (Q = 1), ``qp`` (Q = P) and ``qp2`` (Q = P^2), each ``(B, n)``.
    """

    d: Tensor
    w1: Tensor
    qp: Tensor | None
    qp2: Tensor | None


def linear_blocks(
    calls: Sequence[LinearCall],
    d: Sequence[Mapping[int, Tensor]],
    k: int,
    precond: Callable[[nn.Parameter], tuple[Tensor, Tensor] | None] | None = None,
) -> list[Block]:
    """Blocks of the recorded Linear calls (weights and biases).

    For weight ``W`` (out x in), ``sum_{o,i} d_o d'_o a_i^2 Q_oi = sum_o d_o d'_o (a^2 @ Q^T)_o``, and the
    bias adds ``Q_b``; so each layer reduces to an ``out``-long weighting per sample.
    ``precond(param)`` returns ``(P, P**2)`` or ``None`` for a parameter without optimizer state.
    """
    blocks = []
    for j, call in enumerate(calls):
        dj = d[j]
        if not dj:
            continue
        first = next(iter(dj.values()))
        zeros = torch.zeros_like(first)
        dmat = torch.stack([dj.get(f, zeros) for f in range(k)], 1)  # (B, K, out)
        w, b = call.module.weight, call.module.bias
        has_w, has_b = w.requires_grad, b is not None and b.requires_grad
        a2 = call.inputs.square()
        w1 = ((a2.sum(1, keepdim=True) if has_w else 0.0) + (1.0 if has_b else 0.0)) * torch.ones_like(first)
        qp = qp2 = None
        if precond is not None:
            qp, qp2 = torch.zeros_like(first), torch.zeros_like(first)
            pw = precond(w) if has_w else None
            if pw is not None:
                qp = torch.addmm(qp, a2, pw[0].T)
                qp2 = torch.addmm(qp2, a2, pw[1].T)
            pb = precond(b) if has_b else None  # type: ignore[arg-type]
            if pb is not None:
                qp = qp + pb[0]
                qp2 = qp2 + pb[1]
        blocks.append(Block(dmat, w1, qp, qp2))
    return blocks


def direct_block(grads: Mapping[int, Tensor], k: int, p: tuple[Tensor, Tensor] | None) -> Block:
    """Block of one parameter whose per-sample gradients are given as ``(B, n)`` rows per part;
    ``p`` is its ``(P, P**2)``."""
    first = next(iter(grads.values()))
    zeros = torch.zeros_like(first)
    dmat = torch.stack([grads.get(f, zeros) for f in range(k)], 1)
    ones = torch.ones_like(first)
    return Block(dmat, ones, zeros if p is None else p[0] * ones, zeros if p is None else p[1] * ones)


def gram_from_blocks(blocks: Sequence[Block]) -> GramSet:
    """Sum the blocks' per-sample Gram matrices with one batched matmul."""
    d = torch.cat([b.d for b in blocks], 2)  # (B, K, N)
    k = d.shape[1]
    with_p = all(b.qp is not None for b in blocks)
    weights = [torch.cat([b.w1 for b in blocks], 1)]
    if with_p:
        weights += [torch.cat([b.qp for b in blocks], 1), torch.cat([b.qp2 for b in blocks], 1)]  # type: ignore[misc]
    left = torch.cat([d * w[:, None, :] for w in weights], 1)  # (B, K * len(weights), N)
    g = left @ d.transpose(1, 2)
    return GramSet(g[:, :k], g[:, k : 2 * k] if with_p else None, g[:, 2 * k :] if with_p else None)


def jacobian_gram(
    parts_fn: Callable[[dict[str, Tensor], object], Tensor],
    params: Mapping[str, nn.Parameter],
    inputs: object,
    batch: int,
    k: int,
    precond: Mapping[str, Tensor | None] | None = None,
    chunk: int = 64,
) -> GramSet:
    """Per-sample Gram matrices from exact per-sample Jacobians (the generic path).

    ``parts_fn(params, one_sample_inputs)`` returns the ``(K,)`` vector of parts for one sample;
    ``inputs`` is a pytree of tensors whose leading dimension is the batch; ``precond`` maps parameter
    names to their preconditioner (or ``None``). Samples are processed in
    chunks of ``chunk`` to bound memory (``chunk * K * n_params`` floats).
    """
    from torch.func import jacrev, vmap

    detached = {n: p.detach() for n, p in params.items()}
    jac = vmap(jacrev(parts_fn), in_dims=(None, 0))
    pieces = []
    for start in range(0, batch, chunk):
        sub = torch.utils._pytree.tree_map(lambda x, s=start: x[s : s + chunk], inputs)
        jacs = jac(detached, sub)  # name -> (b, K, *shape)
        b = next(iter(jacs.values())).shape[0]
        part = empty_gram(b, k, precond is not None)
        for name, jv in jacs.items():
            flat = jv.reshape(b, k, -1)
            part.g1 += flat @ flat.transpose(1, 2)
            p = precond.get(name) if precond is not None else None
            if p is not None:
                pf = p.reshape(1, 1, -1)
                part.gp += (flat * pf) @ flat.transpose(1, 2)  # type: ignore[operator]
                part.gp2 += (flat * pf.square()) @ flat.transpose(1, 2)  # type: ignore[operator]
        pieces.append(part)
    return GramSet(
        torch.cat([p.g1 for p in pieces]),
        torch.cat([p.gp for p in pieces]) if precond is not None else None,  # type: ignore[misc]
        torch.cat([p.gp2 for p in pieces]) if precond is not None else None,  # type: ignore[misc]
    )


def linear_modules(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def params_outside(module: nn.Module, owners: Iterable[nn.Module]) -> list[str]:
    """Names of trainable parameters of ``module`` not owned by any module in ``owners``."""
    owned = {id(p) for m in owners for p in m.parameters(recurse=False)}
    return [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in owned]
