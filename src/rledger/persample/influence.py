"""Watched actions: which samples' updates moved log pi(a_w|s_w) of the (state, action) pairs a user names.

For a watched pair ``w`` and sample ``i`` of optimizer step ``k``, the sample's update is
``-c_k * F_k * g_i`` (fresh, :mod:`rledger.persample.loss`) or ``-c_k * D_k * g_i`` (in total through
Adam's first moment, :mod:`rledger.persample.momentum`); its first-order effect on the watched
log-probability is the dot product with ``q_w = grad log pi(a_w|s_w)`` at step ``k``'s parameters
(TracIn-style influence, per sample and exact to first order). Over Linear layers, with the watched
pair's layer input ``x_w`` and output gradient ``d_w`` and the sample's ``x_i`` and loss output gradient
``e_i = sum_f c_i^f d_i^f``, a layer's share is ``<e_i x_i^T, F * (d_w x_w^T)>`` plus the bias's
``sum_o F_b,o d_w,o e_i,o``: per step, one matrix product of the samples' layer gradients (formed a
cache-sized piece of steps at a time) with the watched pairs' scaled ones. Per optimizer step, the actual change of
each watched log-probability is compared with its first-order prediction ``q_w . (theta_{k+1} -
theta_k)``; the difference is the linearization gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from torch import Tensor, nn

INFLUENCE_CHUNK_ELEMENTS = 1 << 19
"""Floats of one layer's per-sample and scaled watched gradients per piece of steps (2 MiB): pieces
that stay in the CPU's cache ran faster than larger ones (160 steps, 64 samples, 20 pairs, two factor
sets, CartPole's 64-64 policy, one thread: 2^18-2^20 floats 0.089-0.095 s, 2^21 0.129 s; the
former form, products of the inputs then of the outputs per (sample, pair), 0.124 s)."""


@dataclass
class Watched:
    """The watched pairs: observations ``(W, ...)`` (a dict of them for Dict spaces), actions ``(W,)``
    (``(W, n)`` for Box), and a label for each."""

    obs: Any
    actions: Tensor
    labels: list[str]
    states: list[int | None] | None = None  # each pair's state id, where it was given by one

    def expand(self, steps: int) -> tuple[Any, Tensor]:
        """The pairs repeated for ``steps`` steps: ``(S, W, ...)``."""
        return th.utils._pytree.tree_map(lambda x: x[None].expand(steps, *x.shape), (self.obs, self.actions))


@dataclass
class WatchedGrads:
    """``q_w`` of ``S`` steps, factored: per Linear layer its input ``(S, W, in)`` and log pi's output
    gradient ``(S, W, out)`` (None where log pi does not pass), per direct parameter ``(S, W, n)``."""

    inputs: list[Tensor | None]
    d: list[Tensor | None]
    direct: dict[str, Tensor]

    def cut(self, lo: int, hi: int | None) -> WatchedGrads:
        return WatchedGrads(
            [None if x is None else x[lo:hi] for x in self.inputs],
            [None if x is None else x[lo:hi] for x in self.d],
            {k: v[lo:hi] for k, v in self.direct.items()},
        )

    def tensors(self) -> list[Tensor]:
        return [x for x in (*self.inputs, *self.d, *self.direct.values()) if x is not None]


def watched_grads(
    inputs: Sequence[Tensor],
    d_out: Sequence[Mapping[int, Tensor]],
    d_direct: Mapping[str, Mapping[int, Tensor]],
) -> WatchedGrads:
    """Log pi's part (part 0) of a replay of the watched pairs."""
    d = [dj.get(0) for dj in d_out]
    return WatchedGrads(
        [x if dj is not None else None for x, dj in zip(inputs, d, strict=True)],
        d,
        {n: u[0] for n, u in d_direct.items() if 0 in u},
    )


def influence(
    layers: Sequence[tuple[str, nn.Linear, set[int]]],
    inputs: Sequence[Tensor],
    d_out: Sequence[Mapping[int, Tensor]],
    d_direct: Mapping[str, Mapping[int, Tensor]],
    coef: Tensor,
    clip: Tensor,
    q: WatchedGrads,
    facs: Sequence[Mapping[str, Tensor]],
) -> list[Tensor]:
    """Per factor set ``F`` in ``facs``, ``(S, B, W)``: ``q_w . (-clip * F * g_i)`` for ``S`` steps of
    ``B`` samples, ``F`` per parameter name ``(S, *shape)`` (a parameter without one adds nothing);
    ``coef`` ``(S, B, K)`` the loss coefficients, ``clip`` ``(S, 1)`` the global clipping factors.
    The factor sets share one pass: the samples' layer gradients are formed once per piece of steps,
    and one batched matmul takes every set's scaled watched gradients."""
    s, b = coef.shape[0], coef.shape[1]
    w_n = next(x.shape[1] for x in q.tensors())
    n_f = len(facs)
    total = th.zeros(s, b, n_f, w_n, dtype=coef.dtype, device=coef.device)
    for j, (name, ly, support) in enumerate(layers):
        dw, xw = q.d[j], q.inputs[j]
        if dw is None or xw is None:
            continue
        e = sum(coef[..., f, None] * d_out[j][f] for f in sorted(support))  # (S, B, out)
        if not isinstance(e, Tensor):
            continue
        fws = _same_in_all(name, "weight", [f.get(f"{name}.weight") for f in facs])
        fbs = _same_in_all(
            name, "bias", [f.get(f"{name}.bias") if ly.bias is not None else None for f in facs]
        )
        if fws is not None:
            _layer_influence(total, inputs[j], e, xw, dw, fws, fbs)
        elif fbs is not None:
            for k, fb in enumerate(fbs):
                total[:, :, k] += th.einsum("so,swo,sbo->sbw", fb, dw, e)
    for name, qw in q.direct.items():
        if name not in d_direct:
            continue
        u = sum(coef[..., p, None] * g for p, g in d_direct[name].items())  # (S, B, n)
        for k, fac in enumerate(facs):
            f = fac.get(name)
            if f is not None:
                total[:, :, k] += th.einsum("sn,swn,sbn->sbw", f.reshape(s, -1), qw, u)
    no_step = clip == 0  # clipping zeroed the step: 0, not 0 * inf
    total = th.where(no_step[:, :, None, None], th.zeros_like(total), -clip[:, :, None, None] * total)
    return list(total.unbind(2))


def _same_in_all(name: str, kind: str, tensors: list[Tensor | None]) -> list[Tensor] | None:
    """The factor sets' factors of ``name.kind``: all of them, or None where no set has one."""
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise ValueError(f"influence: {name}.{kind} has a factor in some sets only")
    return tensors  # type: ignore[return-value]


def _layer_influence(
    total: Tensor, xi: Tensor, e: Tensor, xw: Tensor, dw: Tensor, fws: list[Tensor], fbs: list[Tensor] | None
) -> None:
    """Adds one Linear layer's share to ``total`` ``(S, B, n_f, W)``: per step, the samples' weight
    gradients ``e_i x_i^T`` against the watched pairs' scaled ones ``F * (d_w x_w^T)`` of every factor
    set, one batched matmul of inner length ``out * in``, in pieces of steps of
    :data:`INFLUENCE_CHUNK_ELEMENTS` floats; the bias's share in one product over all steps."""
    s, b, out_f = e.shape
    w_n, n_f, in_f = dw.shape[1], len(fws), xi.shape[-1]
    width = out_f * in_f
    step = max(1, INFLUENCE_CHUNK_ELEMENTS // max(1, (b + n_f * w_n) * width))
    for lo in range(0, s, step):
        hi = min(s, lo + step)
        n = hi - lo
        g = (e[lo:hi, :, :, None] * xi[lo:hi, :, None, :]).view(n, b, width)
        m = (dw[lo:hi, None, :, :, None] * xw[lo:hi, None, :, None, :]) * th.stack(
            [fw[lo:hi] for fw in fws], 1
        )[:, :, None]  # (n, F, W, out, in)
        total[lo:hi] += th.bmm(g, m.view(n, n_f * w_n, width).transpose(1, 2)).view(n, b, n_f, w_n)
    if fbs is not None:
        mb = dw[:, None] * th.stack(fbs, 1)[:, :, None]  # (S, F, W, out)
        total += th.bmm(e, mb.view(s, n_f * w_n, out_f).transpose(1, 2)).view(s, b, n_f, w_n)


def predicted_change(
    layers: Sequence[tuple[str, nn.Linear, set[int]]], q: WatchedGrads, delta: Mapping[str, Tensor]
) -> Tensor:
    """``(S, W)``: ``q_w . (theta_{k+1} - theta_k)``, the change's first-order prediction, from the
    parameters' change per name ``(S, *shape)``."""
    out: Tensor | None = None
    for j, (name, ly, _) in enumerate(layers):
        dw, xw = q.d[j], q.inputs[j]
        if dw is None or xw is None:
            continue
        dwt = delta.get(f"{name}.weight")
        if dwt is not None:
            term = th.einsum("swo,soi,swi->sw", dw, dwt, xw)
            out = term if out is None else out + term
        dbt = delta.get(f"{name}.bias") if ly.bias is not None else None
        if dbt is not None:
            out = (
                out + th.einsum("swo,so->sw", dw, dbt)
                if out is not None
                else th.einsum("swo,so->sw", dw, dbt)
            )
    for name, qw in q.direct.items():
        dt = delta.get(name)
        if dt is not None:
            term = th.einsum("swn,sn->sw", qw, dt.reshape(dt.shape[0], -1))
            out = term if out is None else out + term
    assert out is not None, "no watched gradient: log pi depends on no trained parameter"
    return out


@dataclass
class WatchedSteps:
    """What the flush measures of ``S`` steps for ``influence_steps`` (the samples' share waits for
    the momentum attribution): the steps' keys ``(S,)`` and the watched log-probabilities before and
    after each step and the first-order prediction of the change, ``(S, W)``."""

    keys: dict[str, np.ndarray]
    before: Tensor
    after: Tensor
    predicted: Tensor

    def cut(self, lo: int, hi: int | None) -> WatchedSteps:
        return WatchedSteps(
            {k: v[lo:hi] for k, v in self.keys.items()},
            self.before[lo:hi],
            self.after[lo:hi],
            self.predicted[lo:hi],
        )


def step_rows(
    keys: Mapping[str, np.ndarray], before: Tensor, after: Tensor, predicted: Tensor, fresh: Tensor
) -> dict[str, np.ndarray]:
    """The ``influence_steps`` rows of ``S`` steps x ``W`` watched pairs (step-major). ``keys``: the
    steps' rollout, epoch, minibatch ``(S,)``; ``fresh`` ``(S, B, W)`` the samples' influence."""
    s, w = before.shape
    change = after.double() - before.double()
    rows = {k: np.repeat(np.asarray(v), w) for k, v in keys.items()}
    rows["watch"] = np.tile(np.arange(w, dtype=np.int16), s)
    rows["log_prob_before"] = before.reshape(-1).cpu().numpy().copy()
    rows["log_prob_after"] = after.reshape(-1).cpu().numpy().copy()
    rows["change"] = change.reshape(-1).cpu().numpy()
    rows["predicted"] = predicted.double().reshape(-1).cpu().numpy()
    rows["fresh"] = fresh.double().sum(1).reshape(-1).cpu().numpy()
    rows["gap"] = rows["change"] - rows["predicted"]
    return rows
