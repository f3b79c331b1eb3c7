"""Slot buffers: what each optimizer step of ``train()`` leaves for its per-sample columns, and the flush.

During ``train()`` nothing touches the policy's forward or backward pass: before each optimizer step the
parameters and the per-sample loss inputs (advantage, ratio, value, old value, return) are copied into
preallocated rows, after it Adam's second moments. After many steps one batched computation
(:meth:`StepBuffers.flush`) replays the buffered minibatches (:mod:`rledger.persample.replay`), builds
their Gram matrices (:mod:`rledger.persample.gram`) and the columns (:mod:`rledger.persample.loss`).
Clipped samples need no special case: the replay gives every sample's score whatever its coefficient.
Holding a few large tensors instead of many small ones keeps Python's garbage collector out of the way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from torch import Tensor, nn

from rledger.persample.gram import linear_gram
from rledger.persample.influence import WatchedSteps, predicted_change, watched_grads
from rledger.persample.loss import LossTerms, Parts, adam_step_factor, clip_coefs, columns, loss_coefficients
from rledger.persample.momentum import MomentumChunk, MomentumTracker
from rledger.persample.replay import Replayer

MAX_BUFFER_ELEMENTS = 1 << 24
"""Upper bound on the floats held by one set of slot buffers (64 MiB); more steps than fit are flushed."""

REPLAY_CHUNK_ELEMENTS = 1 << 25
"""Floats of layer activations and their gradients per chunk of the replay (128 MiB): the buffered steps
are replayed in chunks of about this size, so peak memory does not grow with the network or batch. Large
chunks matter in the background thread: each torch call there hands the GIL over and back, which costs
the training thread tens of microseconds, so the fewer (larger) the calls, the less training slows."""

N_TERMS = 5  # advantage_used, ratio, value, old value, return


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
        dev = params[0].device  # where the policy lives: the copies into the rows stay on its device
        self.p = th.zeros(self.capacity, n_params, device=dev)
        self.v = th.zeros(self.capacity, n_params, device=dev)
        self.terms = th.zeros(self.capacity, N_TERMS, batch, device=dev)  # each step's loss inputs
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
        self.p_end: Tensor | None = None  # the parameters after the last buffered step (influence on)
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
        self, fetch: Callable[[np.ndarray], tuple[Any, Tensor]], max_grad_norm: float, end: bool = False
    ) -> tuple[Any, Tensor]:
        """The buffered steps' observations and actions ``(m, B, ...)``, from the rollout buffer
        (``fetch`` maps (t, env) pairs to them), and their indices, scalars and clip factors stacked
        for :meth:`flush`. Runs on the training thread, before the rollout buffer is refilled, and
        right after the last buffered step: with ``end``, the parameters now are kept (those after
        that step)."""
        m, b = self.m, self.batch
        self.p_end = th.cat(self._sources) if end else None
        scalars = np.array(self._scalars, dtype=np.float64)
        self.keys = scalars[:, :3].astype(np.int64)
        self.step, self.lr = scalars[:, 3], scalars[:, 4]
        self.clip = clip_coefs(th.stack(self._grad_norms), max_grad_norm).cpu().numpy()
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
        tracker: MomentumTracker | None = None,
    ) -> dict[str, np.ndarray]:
        """Columns of the buffered steps (``m * batch`` rows, in recording order), given their
        observations and actions from :meth:`gather`; empties the buffers (also on error).
        ``tracker``: also hand the steps' replay to the momentum attribution."""
        try:
            return self._flush(replayer, parts, eps, betas, obs, act, tracker)
        finally:
            self.m = 0
            self.busy = False

    def _flush(
        self,
        replayer: Replayer,
        parts: Parts,
        eps: float,
        betas: tuple[float, float],
        obs: Any,
        act: Tensor,
        tracker: MomentumTracker | None,
    ) -> dict[str, np.ndarray]:
        m, b = self.m, self.batch
        replayer.set_parts(parts)
        if tracker is not None:
            tracker.layers = list(
                zip(replayer.linear_names, replayer.linears, replayer.supports, strict=True)
            )
            tracker.k, tracker.ent_part = parts.k, parts.ent_part
        width = sum(ly.in_features + (parts.k + 2) * ly.out_features for ly in replayer.linears)
        chunk = max(1, REPLAY_CHUNK_ELEMENTS // max(1, b * width))
        pieces = []
        for lo in range(0, m, chunk):
            hi = min(m, lo + chunk)
            sub_obs, sub_act = th.utils._pytree.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi], (obs, act))
            pieces.append(self._chunk_columns(replayer, parts, eps, betas, lo, hi, sub_obs, sub_act, tracker))
        cols = {name: th.cat([p[name] for p in pieces]) for name in pieces[0]}
        out = {name: col.reshape(-1).cpu().numpy().copy() for name, col in cols.items()}
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
        tracker: MomentumTracker | None = None,
    ) -> dict[str, Tensor]:
        k = parts.k
        terms = self.terms[lo:hi]
        bounds = th.tensor([self.bounds], dtype=th.float64, device=terms.device)
        cr, crv = bounds[:, :2], (bounds[:, 2:] if parts.clip_vf else None)
        coef, alpha, ent_part, ent_logp, clipped = loss_coefficients(
            LossTerms(terms[:, 0], terms[:, 1], cr, terms[:, 2], terms[:, 3], terms[:, 4], crv,
                      parts.ent_coef, parts.vf_coef),
            not parts.ent_logp,
        )  # fmt: skip
        params = self._per_param(self.p[lo:hi])
        inputs, d_out, d_direct = replayer.output_grads(params, obs, act)
        fac, flat = self._factors(lo, hi, eps, betas)
        layers = list(zip(replayer.linear_names, replayer.linears, replayer.supports, strict=True))
        gram = linear_gram(layers, inputs, d_out, d_direct, fac, k)
        clip = th.from_numpy(self.clip[lo:hi]).to(terms.device)[:, None]
        if tracker is not None:
            b = self.batch
            keys = {
                "rollout": np.repeat(self.keys[lo:hi, 0:1], b, 1).astype(np.int32),
                "epoch": np.repeat(self.keys[lo:hi, 1:2], b, 1).astype(np.int16),
                "minibatch": np.repeat(self.keys[lo:hi, 2:3], b, 1).astype(np.int32),
                "t": self.t[lo:hi],
                "env": self.env[lo:hi],
            }
            chunk = MomentumChunk(keys, flat, inputs, d_out, d_direct, coef, alpha, ent_logp, clip)
            rollout = int(self.keys[lo, 0])
            if tracker.influence_on(rollout):
                chunk.q, chunk.watched_steps = self._watched(replayer, tracker, layers, lo, hi, params)
            tracker.add(chunk)
        return {
            "advantage_used": terms[:, 0],
            "ratio": terms[:, 1],
            "clipped": clipped,
            **columns(gram.g1, gram.gp2, gram.gp00, coef, alpha, ent_part, ent_logp, clip),
        }

    def _watched(
        self,
        replayer: Replayer,
        tracker: MomentumTracker,
        layers: list[Any],
        lo: int,
        hi: int,
        params: dict[str, Tensor],
    ) -> tuple[Any, WatchedSteps]:
        """The watched pairs at steps ``lo .. hi - 1``: their log pi gradients at each step's
        parameters, their log-probabilities before and after each step and the first-order
        prediction of the change (the samples' influence is computed with the momentum's)."""
        assert tracker.watched is not None and self.p_end is not None
        w_obs, w_act = tracker.watched.expand(hi - lo)
        q = watched_grads(*replayer.output_grads(params, w_obs, w_act))
        p_next = th.cat([self.p[lo + 1 : min(hi + 1, self.m)], *([self.p_end[None]] if hi == self.m else [])])
        before = replayer.log_probs(params, w_obs, w_act)
        after = replayer.log_probs(self._per_param(p_next), w_obs, w_act)
        predicted = predicted_change(layers, q, self._per_param(p_next - self.p[lo:hi]))
        keys = {
            "rollout": self.keys[lo:hi, 0].astype(np.int32),
            "epoch": self.keys[lo:hi, 1].astype(np.int16),
            "minibatch": self.keys[lo:hi, 2].astype(np.int32),
        }
        return q, WatchedSteps(keys, before, after, predicted)

    def _factors(
        self, lo: int, hi: int, eps: float, betas: tuple[float, float]
    ) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
        """``F = scale * P`` and ``F**2`` per parameter (by name) and step, ``(S, *shape)``, and ``F``
        flat ``(S, n_params)``."""
        dev = self.v.device
        step, lr = th.from_numpy(self.step[lo:hi]).to(dev), th.from_numpy(self.lr[lo:hi]).to(dev)
        f = adam_step_factor(self.v[lo:hi], step, lr, betas, eps)
        f1, f2 = self._per_param(f), self._per_param(f.square())
        return {name: (f1[name], f2[name]) for name in self.names}, f

    def _per_param(self, flat: Tensor) -> dict[str, Tensor]:
        return per_param_views(flat, self.names, self._sizes, self._shapes)


def per_param_views(
    flat: Tensor, names: list[str], sizes: list[int], shapes: list[tuple[int, ...]]
) -> dict[str, Tensor]:
    """Rows of flat parameter-shaped values ``(S, n_params)`` as ``name -> (S, *shape)`` views."""
    # one split, then a view only where the shape has two or more dimensions (few torch calls:
    # each costs the training thread a GIL hand-off when this runs in the background thread)
    parts = flat.split(sizes, dim=1)
    return {
        name: part if len(shape) == 1 else part.view(flat.shape[0], *shape)
        for name, part, shape in zip(names, parts, shapes, strict=True)
    }
