"""Per-sample Gram matrices of the loss parts over Linear and Conv2d layers.

Everything the ``samples`` table records follows from sample ``i``'s Gram matrices of the parts,

    G_i^Q[f, h] = <grad f_i, Q * grad h_i>        for Q in {1, F^2}, and <grad log pi_i, F grad log pi_i>

where ``F`` is the optimizer's per-coordinate step scale (:mod:`rledger.persample.loss`). For a Linear
layer ``z = a W^T + b``, sample ``i``'s weight gradient of part ``f`` is the outer product ``d_i^f a_i^T``
with ``d_i^f = d f_i / d z_i``, so

    <d^f a^T, Q (d^h a^T)> = sum_o d^f_o d^h_o (a^2 @ Q_W^T)_o,   and the bias adds sum_o d^f_o d^h_o Q_b,o

and each layer reduces to one ``out``-long weighting per sample (:func:`layer_weights`). The output
gradients ``d`` come from a replay of the forward pass (:mod:`rledger.persample.replay`) or from one
backward pass to the captured layer outputs (:class:`LayerCapture`, :func:`output_grads`).

A Conv2d layer is a Linear layer applied at every output position ``p`` to the unfolded input patch
``u_p`` (``C * kh * kw`` long): sample ``i``'s weight gradient of part ``f`` is ``D^f_i U_i^T``
(``D``: the output gradients ``(out, P)``, ``U``: the patches ``(C kh kw, P)``), its bias gradient
``D^f_i 1``. Under a diagonal preconditioner (Adam's ``F``) these per-sample gradients are
materialized (as one convolution-weight gradient with a group per sample), a bounded chunk of samples
at a time (:data:`CONV_CHUNK_ELEMENTS`); where ``F`` is one
number for the whole layer (SGD) or absent, the Gram identity over patches
``<D^f U^T, D^h U^T> = sum_{p,q} (D^f^T D^h)_{pq} (U^T U)_{pq}`` (the "ghost norm") is used instead
when it costs fewer operations (:func:`conv_gram`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch as th
from torch import Tensor, nn
from torch.nn import functional as tf

CONV_CHUNK_ELEMENTS = 1 << 19
"""At most this many floats of per-sample gradients (or patch Gram matrices) at once per Conv2d layer:
small enough for the chunk to stay in cache and its buffers to be reused (measured on NatureCNN at
B=256: the scaling pass over fresh 100 MB tensors took 5x as long as over a reused buffer)."""


@dataclass
class Gram:
    """Per-sample Gram matrices of ``S`` steps of ``B`` samples: ``g1`` (Q = 1) and ``gp2`` (Q = F^2),
    ``(S, B, K, K)``; ``gp00 = <grad log pi, F grad log pi>``, ``(S, B)``."""

    g1: Tensor
    gp2: Tensor
    gp00: Tensor


Factors = Mapping[str, tuple[Tensor, Tensor]]
"""Parameter name -> ``(F, F^2)`` at each step, ``(S, *shape)``; a parameter without it adds nothing."""


def layer_weights(
    name: str, ly: nn.Linear, a2: Tensor, fac: Factors, with_f: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per sample and output unit of Linear layer ``name`` with squared inputs ``a2`` ``(S, B, in)``:
    ``w1 = |a|^2 + 1``, ``q2 = a^2 @ (F^2)^T + F_b^2`` and, when asked, ``q1 = a^2 @ F^T + F_b``; a
    parameter the optimizer does not train adds nothing."""
    s, b = a2.shape[0], a2.shape[1]
    fw = fac.get(f"{name}.weight")
    fb = fac.get(f"{name}.bias") if ly.bias is not None else None
    w1 = a2.sum(-1) if fw is not None else a2.new_zeros(s, b)
    if fb is not None:
        w1 += 1.0

    def q(i: int) -> Tensor:  # a^2 @ Q_W^T + Q_b with Q = F (i = 0) or F^2 (i = 1)
        if fw is None:
            zeros = a2.new_zeros(s, b, ly.out_features)
            return zeros if fb is None else zeros + fb[i][:, None, :]
        if fb is None:
            return th.bmm(a2, fw[i].transpose(1, 2))
        return th.baddbmm(fb[i][:, None, :], a2, fw[i].transpose(1, 2))

    return w1, q(1), (q(0) if with_f else None)


def linear_gram(
    layers: Sequence[tuple[str, nn.Linear, set[int]]],
    inputs: Sequence[Tensor],
    d_out: Sequence[Mapping[int, Tensor]],
    d_direct: Mapping[str, Mapping[int, Tensor]],
    fac: Factors,
    k: int,
) -> Gram:
    """The per-sample Gram matrices of ``S`` steps of ``B`` samples.

    ``layers``: each Linear or Conv2d layer's name, module and support (the parts whose gradient passes
    through it); ``inputs[j]`` its input ``(S, B, in)`` (a Conv2d's ``(S, B, C, H, W)``);
    ``d_out[j]``: part -> output gradient ``(S, B, out)`` (a Conv2d's ``(S, B, out, H', W')``);
    ``d_direct``: per parameter outside the Linear layers (a Gaussian's ``log_std``), part -> per-sample
    gradient ``(S, B, n)``; ``fac``: the step scales by parameter name."""
    s, b = inputs[0].shape[0], inputs[0].shape[1]
    dev = inputs[0].device  # where the policy lives
    g1 = th.zeros(s, b, k, k, device=dev)
    gp2 = th.zeros(s, b, k, k, device=dev)
    gp00 = th.zeros(s, b, device=dev)
    for j, (name, ly, support) in enumerate(layers):
        sup = sorted(support)
        if not sup:
            continue
        if isinstance(ly, nn.Conv2d):
            for st in range(s):
                conv_gram(name, ly, inputs[j][st], d_out[j], st, sup, fac, g1[st], gp2[st], gp00[st])
            continue
        w1, q2, q1 = layer_weights(name, ly, inputs[j].square(), fac, with_f=0 in sup)
        d = d_out[j]  # part -> (S, B, out)
        for x, f in enumerate(sup):
            for h in sup[x:]:
                dd = d[f] * d[h]
                g1[..., f, h] += dd.sum(-1) * w1
                gp2[..., f, h] += (dd * q2).sum(-1)
                if f == h == 0 and q1 is not None:
                    gp00 += (dd * q1).sum(-1)
    for name, u in d_direct.items():  # part -> (S, B, n)
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
    return Gram(g1, gp2, gp00)


UNFOLD_BELOW = 64
"""Conv2d layers with fewer output positions materialize per-sample gradients from unfolded patches."""


def padded(ly: nn.Conv2d, x: Tensor) -> tuple[Tensor, Any]:
    """``ly``'s input with any padding that is not a symmetric zero padding applied (the other
    padding modes, and "same" with its possibly uneven split), and the zero padding left to apply."""
    if ly.padding_mode != "zeros":
        return tf.pad(x, ly._reversed_padding_repeated_twice, mode=ly.padding_mode), (0, 0)
    if ly.padding == "same":  # torch pads total // 2 before and the rest after
        total = [d * (k - 1) for d, k in zip(ly.dilation, ly.kernel_size, strict=True)]
        pads = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        return tf.pad(x, pads), (0, 0)
    return x, ((0, 0) if ly.padding == "valid" else ly.padding)


def patches(ly: nn.Conv2d, x: Tensor) -> Tensor:
    """``(B, C kh kw, P)``: the input patch that each of Conv2d ``ly``'s ``P`` output positions reads,
    in the order of ``ly.weight.view(out, -1)``'s columns (padding as the layer pads, any mode)."""
    x, pad = padded(ly, x)
    return tf.unfold(x, ly.kernel_size, dilation=ly.dilation, padding=pad, stride=ly.stride)


def _ghost_cheaper(n_pos: int, n_in: int, out: int, k: int) -> bool:
    """Whether the Gram identity over ``n_pos`` patches of ``n_in`` costs fewer multiplications than
    materializing ``k`` parts' per-sample gradients of an ``out x n_in`` weight."""
    return n_pos * n_pos * (n_in + k * (k + 1) // 2 * out) < k * out * n_pos * n_in


def conv_gram(
    name: str,
    ly: nn.Conv2d,
    x: Tensor,
    d: Mapping[int, Tensor],
    st: int,
    sup: Sequence[int],
    fac: Factors,
    g1: Tensor,
    gp2: Tensor,
    gp00: Tensor,
) -> None:
    """Adds Conv2d layer ``name``'s share to one step's Gram matrices, in place: ``g1``, ``gp2``
    ``(B, K, K)`` (upper triangle, as :func:`linear_gram` fills it) and ``gp00`` ``(B,)``.

    ``x``: the layer's input ``(B, C, H, W)``; ``d``: part -> output gradients ``(S, B, out, H', W')``
    of which step ``st`` is taken; ``sup``: the parts in the layer's support, sorted. The weight's
    per-sample gradients are materialized in chunks of samples, unless its step scale is one number (or
    absent from the optimizer) and the Gram identity over patches costs fewer operations."""
    fw = fac.get(f"{name}.weight")
    fb = fac.get(f"{name}.bias") if ly.bias is not None else None
    b, out, k = x.shape[0], ly.out_channels, len(sup)
    out_hw = d[sup[0]].shape[-2:]
    dd = th.stack([d[f][st].reshape(b, out, -1) for f in sup], 1)  # (B, k, out, P)
    n_pos = dd.shape[-1]
    # the layer's blocks over its parts: <G^f, G^h>, <F G^f, F G^h>, <G^f, F G^h>
    blk1, blk2, blk0 = (x.new_zeros(b, k, k) for _ in range(3))
    if fw is not None:
        f1 = fw[0][st].reshape(-1)
        n_in = f1.numel() // out  # C kh kw
        ghost = bool((f1 == f1[0]).all()) and _ghost_cheaper(n_pos, n_in, out, k)
        per_sample = (2 * n_pos * n_pos + n_in * n_pos) if ghost else k * out * n_in
        chunk = max(1, CONV_CHUNK_ELEMENTS // per_sample)
        if ghost:
            _ghost_blocks(ly, x, dd, chunk, blk1)
            blk2.add_(blk1 * f1[0].square())
            blk0.add_(blk1 * f1[0])
        else:
            _materialized_blocks(ly, x, dd, f1, chunk, out_hw, blk1, blk2, blk0)
    if fb is not None:
        bias = dd.sum(-1)  # (B, k, out)
        fbias = bias * fb[0][st].reshape(1, 1, -1)
        blk1.baddbmm_(bias, bias.transpose(1, 2))
        blk2.baddbmm_(fbias, fbias.transpose(1, 2))
        blk0.baddbmm_(bias, fbias.transpose(1, 2))
    upper = th.ones(k, k, dtype=th.bool, device=x.device).triu()
    ix = th.tensor(sup, device=x.device)
    for target, blk in ((g1, blk1), (gp2, blk2)):
        target[:, ix[:, None], ix[None, :]] += blk * upper
    if sup[0] == 0:
        gp00 += blk0[:, 0, 0]


def _materialized_blocks(
    ly: nn.Conv2d,
    x: Tensor,
    dd: Tensor,
    f1: Tensor,
    chunk: int,
    out_hw: Any,
    blk1: Tensor,
    blk2: Tensor,
    blk0: Tensor,
) -> None:
    """The blocks from materialized per-sample weight gradients ``G^f_i = D^f_i U_i^T``, ``chunk``
    samples at a time. On large output maps as one convolution-weight gradient with a group per
    sample; on small ones (fewer than :data:`UNFOLD_BELOW` positions) as a batched product with the
    unfolded patches (the faster of the two on CPU for NatureCNN's layers)."""
    b, k, out, n_pos = dd.shape
    scaled = x.new_empty(min(chunk, b), k, f1.numel())
    grads_buf = th.empty_like(scaled) if n_pos < UNFOLD_BELOW else None  # the unfold route writes here
    for start in range(0, b, chunk):
        rows = slice(start, min(b, start + chunk))
        dc = dd[rows]
        c = dc.shape[0]
        if n_pos < UNFOLD_BELOW:
            u = patches(ly, x[rows])  # (c, n_in, P)
            assert grads_buf is not None
            grads = grads_buf[:c]
            th.bmm(dc.reshape(c, k * out, n_pos), u.transpose(1, 2), out=grads.view(c, k * out, -1))
        else:
            xc, pad = padded(ly, x[rows])
            grads = th.nn.grad.conv2d_weight(
                xc.reshape(1, -1, *xc.shape[2:]),
                (c * k * out, *ly.weight.shape[1:]),
                dc.reshape(1, c * k * out, *out_hw),
                stride=ly.stride,
                padding=pad,
                dilation=ly.dilation,
                groups=c,
            ).view(c, k, -1)
        fg = th.mul(grads, f1, out=scaled[:c])  # F G
        th.bmm(grads, grads.transpose(1, 2), out=blk1[rows])
        th.bmm(fg, fg.transpose(1, 2), out=blk2[rows])
        th.bmm(grads, fg.transpose(1, 2), out=blk0[rows])


def _ghost_blocks(ly: nn.Conv2d, x: Tensor, dd: Tensor, chunk: int, blk1: Tensor) -> None:
    """``<G^f, G^h> = sum_pq (D^f^T D^h)_pq (U^T U)_pq`` without per-sample gradients."""
    b, k = dd.shape[0], dd.shape[1]
    for start in range(0, b, chunk):
        rows = slice(start, min(b, start + chunk))
        u = patches(ly, x[rows])  # (c, n_in, P)
        uu = th.bmm(u.transpose(1, 2), u)
        dc = dd[rows]
        for f in range(k):
            for h in range(f, k):
                val = (th.bmm(dc[:, f].transpose(1, 2), dc[:, h]) * uu).sum((1, 2))
                blk1[rows, f, h] = val
                blk1[rows, h, f] = val


# ---------------------------------------------------------------- output gradients from a live graph
@dataclass
class LayerCall:
    """One call of a Linear or Conv2d layer recorded during a forward pass."""

    name: str
    module: nn.Linear | nn.Conv2d
    inputs: Tensor  # (B, in) or (B, C, H, W), detached
    output: Tensor | None  # (B, out) or (B, out, H', W'), in the autograd graph; dropped once used


@dataclass
class LayerCapture:
    """Forward hooks on Linear (and Conv2d) layers that record each call's input and output.

    A context manager: the hooks are removed on exit, even on error, so they never outlive it.
    :meth:`take` hands over the calls recorded since the last take.
    """

    modules: Mapping[str, nn.Linear | nn.Conv2d]
    calls: list[LayerCall] = field(default_factory=list)
    _handles: list[th.utils.hooks.RemovableHandle] = field(default_factory=list)

    def __enter__(self) -> LayerCapture:
        self.calls = []
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.calls.append(LayerCall(name, module, args[0].detach(), output))  # type: ignore[arg-type]

        return hook

    def take(self) -> list[LayerCall]:
        calls, self.calls = self.calls, []
        return calls

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


def supports(parts: Sequence[Tensor], calls: Sequence[LayerCall]) -> list[set[int]]:
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
    parts: Sequence[Tensor], calls: Sequence[LayerCall], support: Sequence[set[int]]
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
        grads = th.autograd.grad(
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
