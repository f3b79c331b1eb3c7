"""Momentum-propagated attribution: what a sample's gradient moves through Adam's first moment, in total.

A gradient term ``g`` that enters Adam's first moment at step ``k`` moves the parameters at every
later step ``s >= k`` by ``beta1^(s-k) a_s * g`` (elementwise), where
``a_s = lr_s (1 - beta1) / (1 - beta1^s) / (sqrt(v_hat_s) + eps)`` is step ``s``'s fresh-gradient
factor (:func:`rledger.persample.loss.adam_step_factor`, the ``F`` of the ``samples`` table). Summed
over the steps counted, the factor is

    D_k = sum_{s=k}^{k+n-1} beta1^(s-k) a_s,    n = min(horizon, steps left in the learn() call)

which the backward recurrence ``E_s = a_s + beta1 E_{s+1}`` gives as ``D_k = E_k - beta1^n E_{k+n}``.
The ``momentum`` table's columns are the ``samples`` table's Adam-scaled columns with ``D_k`` in
place of ``a_k`` (the same Gram identities, :mod:`rledger.persample.gram`). The attribution holds each
later step's gradient and second moment as recorded: it is first order in the sample's own gradient,
and what a changed parameter does to later gradients (weight decay's term among them) is not counted.

:class:`MomentumTracker` streams: each buffered step's replay outputs wait until ``horizon`` later
steps have their factors (or the ``learn()`` call ends), then their rows are computed and the step's
data dropped. It holds at most about ``horizon`` steps plus one flush's worth: memory is bounded in
run length. The result does not depend on how steps arrive in pieces (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from torch import Tensor, nn

from rledger.persample.gram import Factors, linear_gram
from rledger.persample.influence import Watched, WatchedGrads, WatchedSteps, influence, step_rows
from rledger.persample.loss import columns

DEFAULT_CUT = 1e-9
"""The default horizon counts steps until the first moment's remaining weight ``beta1^n`` is below
this (``n = 197`` for Adam's ``beta1 = 0.9``)."""


def default_horizon(beta1: float, cut: float = DEFAULT_CUT) -> int:
    """The number of steps ``n`` after which ``beta1^n <= cut`` (1 for ``beta1 == 0``)."""
    if beta1 <= 0.0:
        return 1
    return max(1, math.ceil(math.log(cut) / math.log(beta1)))


@dataclass
class MomentumChunk:
    """``S`` consecutive optimizer steps of ``B`` samples, as the replay gave them."""

    keys: dict[str, np.ndarray]  # (S, B) each: rollout, epoch, minibatch, t, env
    a: Tensor  # (S, n_params) the steps' fresh factors a_s, flat, float32
    inputs: list[Tensor]  # per Linear layer (S, B, in)
    d_out: list[dict[int, Tensor]]  # per layer: part -> (S, B, out)
    d_direct: dict[str, dict[int, Tensor]]  # per direct parameter: part -> (S, B, n)
    coef: Tensor  # (S, B, K)
    alpha: Tensor  # (S, B)
    ent_logp: Tensor | None  # (S, B)
    clip: Tensor  # (S, 1)
    q: WatchedGrads | None = None  # the watched pairs' log pi gradients at each step (influence on)
    watched_steps: WatchedSteps | None = None  # their log-probabilities around each step

    @property
    def steps(self) -> int:
        return int(self.a.shape[0])

    def split(self, n: int) -> tuple[MomentumChunk, MomentumChunk]:
        """The first ``n`` steps and the rest."""

        def cut(x: Any, lo: int, hi: int | None) -> Any:
            return th.utils._pytree.tree_map(lambda v: v[lo:hi], x)

        head = MomentumChunk(
            {k: v[:n] for k, v in self.keys.items()}, self.a[:n], cut(self.inputs, 0, n),
            cut(self.d_out, 0, n), cut(self.d_direct, 0, n), self.coef[:n], self.alpha[:n],
            None if self.ent_logp is None else self.ent_logp[:n], self.clip[:n],
            None if self.q is None else self.q.cut(0, n),
            None if self.watched_steps is None else self.watched_steps.cut(0, n),
        )  # fmt: skip
        tail = MomentumChunk(
            {k: v[n:] for k, v in self.keys.items()}, self.a[n:], cut(self.inputs, n, None),
            cut(self.d_out, n, None), cut(self.d_direct, n, None), self.coef[n:], self.alpha[n:],
            None if self.ent_logp is None else self.ent_logp[n:], self.clip[n:],
            None if self.q is None else self.q.cut(n, None),
            None if self.watched_steps is None else self.watched_steps.cut(n, None),
        )  # fmt: skip
        return head, tail


@dataclass
class MomentumTracker:
    """Streams the ``momentum`` table's rows of one ``InstrumentedPPO`` (see the module docstring).

    ``layers``: the Linear layers' names, modules and supports (as the replay's); ``per_param`` maps a
    flat ``(S, n_params)`` tensor to per-parameter views (name -> ``(S, *shape)``); ``k`` and
    ``ent_part``: the loss's parts (:class:`rledger.persample.loss.Parts`).
    """

    beta1: float
    horizon: int
    per_param: Callable[[Tensor], dict[str, Tensor]]
    layers: Sequence[tuple[str, nn.Linear, set[int]]] = ()
    k: int = 2
    ent_part: int | None = None
    watched: Watched | None = None  # the influence tables' watched pairs (None: not recorded)
    influence_every: int = 1  # influence rows for every Nth rollout
    pending: list[MomentumChunk] = field(default_factory=list)
    # table -> rollout -> row pieces
    done: dict[str, dict[int, list[dict[str, np.ndarray]]]] = field(default_factory=dict)
    bytes_held: int = 0  # the largest buffer held so far (pending chunks' tensors), in bytes

    def add(self, chunk: MomentumChunk) -> None:
        """Take ``S`` more steps (in order); compute the rows of every step whose horizon is now known."""
        self.pending.append(chunk)
        self.bytes_held = max(self.bytes_held, _nbytes(self.pending))
        self._finalize(end=False)

    def end_learn(self) -> None:
        """The ``learn()`` call ended: every pending step's horizon stops here."""
        self._finalize(end=True)

    def influence_on(self, rollout: int) -> bool:
        """Whether the influence tables have rows for this rollout."""
        return self.watched is not None and rollout % self.influence_every == 0

    def add_rows(self, table: str, rollout: int, rows: dict[str, np.ndarray]) -> None:
        self.done.setdefault(table, {}).setdefault(rollout, []).append(rows)

    def take(self, through: int | None = None) -> dict[int, dict[str, dict[str, np.ndarray]]]:
        """Per rollout all of whose steps are computed (those before the oldest pending step's
        rollout; at most ``through``), each table's rows; removed from the tracker."""
        limit = int(self.pending[0].keys["rollout"][0, 0]) if self.pending else math.inf
        if through is not None:
            limit = min(limit, through + 1)
        out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        for table, by_rollout in self.done.items():
            for r in sorted(by_rollout):
                if r < limit:
                    pieces = by_rollout.pop(r)
                    out.setdefault(r, {})[table] = {
                        k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]
                    }
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ the computation
    def _finalize(self, end: bool) -> None:
        n_total = sum(c.steps for c in self.pending)
        ready = n_total if end else n_total - self.horizon + 1  # steps whose window is known
        if ready <= 0:
            return
        # E_s = a_s + beta1 E_{s+1}, backwards over the pending steps, in float64; row n_total is
        # E beyond the last step (0)
        dev = self.pending[0].a.device
        e = th.zeros(n_total + 1, self.pending[0].a.shape[1], dtype=th.float64, device=dev)
        th.cat([c.a for c in self.pending], out=e[:n_total])
        for s in range(n_total - 2, -1, -1):
            e[s].add_(e[s + 1], alpha=self.beta1)
        idx = th.arange(ready, device=dev)
        counted = th.clamp(n_total - idx, max=self.horizon)  # steps counted for each ready step
        weight = th.pow(th.full((ready,), self.beta1, dtype=th.float64, device=dev), counted.double())
        # D_j = E_j - beta1^n E_{j+n}
        d = th.addcmul(e[:ready], weight[:, None], e[idx + counted], value=-1.0).float()
        # split the pending chunks at `ready` and compute the rows of the head
        heads, lo = [], 0
        while lo < ready:
            chunk = self.pending[0]
            if lo + chunk.steps <= ready:
                heads.append(self.pending.pop(0))
                lo += chunk.steps
            else:
                head, rest = chunk.split(ready - lo)
                heads.append(head)
                self.pending[0] = rest
                lo = ready
        lo = 0
        for head in heads:
            hi = lo + head.steps
            self._rows(head, d[lo:hi], counted[lo:hi], weight[lo:hi])
            lo = hi

    def _rows(self, chunk: MomentumChunk, d: Tensor, counted: Tensor, cut: Tensor) -> None:
        f1 = self.per_param(d)
        f2 = self.per_param(d.square())
        fac: Factors = {name: (f1[name], f2[name]) for name in f1}
        gram = linear_gram(self.layers, chunk.inputs, chunk.d_out, chunk.d_direct, fac, self.k)
        cols = columns(
            gram.g1, gram.gp2, gram.gp00, chunk.coef, chunk.alpha, self.ent_part, chunk.ent_logp, chunk.clip
        )
        b = chunk.coef.shape[1]
        rows: dict[str, np.ndarray] = {k: v.reshape(-1) for k, v in chunk.keys.items()}
        rows["momentum_update_norm"] = cols["adam_update_norm"].reshape(-1).cpu().numpy().copy()
        rows["pg_momentum_update_norm"] = cols["pg_adam_update_norm"].reshape(-1).cpu().numpy().copy()
        rows["momentum_self_reinforcement"] = cols["self_reinforcement"].reshape(-1).cpu().numpy().copy()
        rows["momentum_steps"] = np.repeat(counted.cpu().numpy(), b).astype(np.int32)
        rows["momentum_cut"] = np.repeat(cut.cpu().numpy(), b)
        rollout = chunk.keys["rollout"][:, 0]
        for r in np.unique(rollout):
            sel = np.repeat(rollout == r, b)
            self.add_rows("momentum", int(r), {k: v[sel] for k, v in rows.items()})
        if chunk.q is None or chunk.watched_steps is None:
            return
        fresh, total = influence(
            self.layers, chunk.inputs, chunk.d_out, chunk.d_direct, chunk.coef, chunk.clip, chunk.q,
            [self.per_param(chunk.a), f1],
        )  # fmt: skip
        w = total.shape[2]
        inf_rows = {k: np.repeat(v.reshape(-1), w) for k, v in chunk.keys.items()}
        inf_rows["watch"] = np.tile(np.arange(w, dtype=np.int16), len(rows["t"]))
        inf_rows["influence"] = fresh.reshape(-1).cpu().numpy().copy()
        inf_rows["momentum_influence"] = total.reshape(-1).cpu().numpy().copy()
        ws = chunk.watched_steps
        step_r = step_rows(ws.keys, ws.before, ws.after, ws.predicted, fresh)
        for r in np.unique(rollout):
            sel = np.repeat(rollout == r, b * w)
            self.add_rows("influence", int(r), {k: v[sel] for k, v in inf_rows.items()})
            sel_s = np.repeat(rollout == r, w)
            self.add_rows("influence_steps", int(r), {k: v[sel_s] for k, v in step_r.items()})


def _nbytes(chunks: Sequence[MomentumChunk]) -> int:
    """Bytes of the storages the chunks keep alive (a view keeps its whole base), each counted once."""
    storages: dict[int, int] = {}
    keys = 0
    for c in chunks:
        tensors = [c.a, c.coef, c.alpha, c.clip, *c.inputs]
        if c.q is not None and c.watched_steps is not None:
            ws = c.watched_steps
            tensors += [*c.q.tensors(), ws.before, ws.after, ws.predicted]
        tensors += [t for d in c.d_out for t in d.values()]
        tensors += [t for d in c.d_direct.values() for t in d.values()]
        if c.ent_logp is not None:
            tensors.append(c.ent_logp)
        for t in tensors:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        keys += sum(v.nbytes for v in c.keys.values())
    return sum(storages.values()) + keys
