"""The fast path's batch engine: per-sample columns from the training backward's own cotangents.

When no Linear layer carries both the critic's value and the actor's parts, the cotangent that
``loss.backward()`` itself sends into an actor layer's output is ``D_i = alpha_i d_i^s + gamma_i d_i^H``
(``d^f``: part f's per-sample output gradient; ``alpha``, ``gamma``: the per-sample coefficients of
log pi and of the entropy in the loss) and into a critic layer's output ``beta_i d_i^V``. Forward hooks
copy the layer inputs and tensor hooks these cotangents into preallocated slot buffers; when the
entropy flows through the actor's layers, one extra backward of ``sum_i H_i`` gives ``d^H``. After many
optimizer steps one batched computation turns the buffers into columns, with ``F = scale * P`` the
Adam factor of each step and, for a Linear layer, ``sum_{o,i} x_o y_o a_i^2 Q_oi = sum_o x_o y_o
(a^2 @ Q^T)_o`` (plus the bias):

- loss_grad_norm and adam_update_norm from ``D`` itself (all layers, no decomposition);
- pg_grad_norm from ``D^s = D - gamma d^H`` on the actor's layers (``= alpha d^s``), score_norm as
  pg_grad_norm / |alpha| and self_reinforcement as ``-clip * <D^s, F D^s> / alpha``;
- entropy_grad_norm from ``gamma d^H``, value_grad_norm from ``D`` on the critic's layers.

Samples whose score cannot be read off ``D^s`` (``alpha = 0``: clipped; or ``|alpha| < |gamma|``, where
``D - gamma d^H`` would lose digits) get score_norm and ``<s, F s>`` from exact per-sample gradients
(``torch.func``) at the parameters of their step, which the buffers keep for steps with such samples.

Holding a few large tensors instead of many small ones keeps Python's garbage collector out of the way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from torch import Tensor, nn

MAX_BUFFER_ELEMENTS = 1 << 24
"""Upper bound on the floats held by the slot buffers (64 MiB); more steps than fit are flushed."""

ScoreFn = Callable[[dict[str, Tensor], Any, Tensor], dict[str, Tensor]]

SCORE_CHUNK_ELEMENTS = 1 << 22
"""Floats per copy of the policy parameters across a chunk of the exact score computation (16 MiB):
each sample there holds its own parameters and score, so chunks have this many floats each."""


@dataclass
class Layer:
    index: int  # position of the call in the forward pass
    module: nn.Linear
    actor: bool  # carries log pi (and possibly the entropy); else the value


class CotangentBatch:
    """Slot buffers for up to ``capacity`` optimizer steps of minibatches of ``batch`` samples.

    ``ent_part`` is the entropy's column in the coefficient matrix (``None`` when the loss has no
    entropy term); ``ent_on_layers`` says whether the entropy flows through the actor's layers.
    """

    def __init__(
        self,
        layers: list[Layer],
        params: list[nn.Parameter],
        score_params: list[nn.Parameter],
        score_names: list[str],
        k: int,
        ent_part: int | None,
        ent_on_layers: bool,
        batch: int,
        steps_hint: int,
        log_std: nn.Parameter | None,
        score_fn: ScoreFn,
    ):
        self.layers, self.params = layers, params
        self.score_params, self.score_names = score_params, score_names
        self.k, self.ent_part, self.ent_on_layers = k, ent_part, ent_on_layers
        self.batch, self.log_std, self.score_fn = batch, log_std, score_fn
        n_params = sum(p.numel() for p in params)
        n_score = sum(p.numel() for p in score_params)
        width = sum(ly.module.in_features + ly.module.out_features for ly in layers)
        width += sum(ly.module.out_features for ly in layers if ly.actor) if ent_on_layers else 0
        per_step = (
            batch * (width + k + 4 + (log_std.numel() if log_std is not None else 0)) + n_params + n_score
        )
        self.capacity = int(max(1, min(steps_hint, MAX_BUFFER_ELEMENTS // max(per_step, 1))))
        cap, b = self.capacity, batch
        self.ins = [th.zeros(cap, b, ly.module.in_features) for ly in layers]
        self.dls = [th.zeros(cap, b, ly.module.out_features) for ly in layers]
        self.dhs = [
            th.zeros(cap, b, ly.module.out_features) if ent_on_layers and ly.actor else None for ly in layers
        ]
        self.u_logp = th.zeros(cap, b, log_std.numel()) if log_std is not None else None
        self.v = [th.zeros(cap, *p.shape) for p in params]
        self.p_before = [th.zeros(cap, *p.shape) for p in score_params]
        self.coef = th.zeros(cap, b, k)
        self.adv = th.zeros(cap, b)
        self.ratio = th.zeros(cap, b)
        self.clipped = th.zeros(cap, b, dtype=th.bool)
        self.t = np.zeros((cap, b), dtype=np.int32)
        self.env = np.zeros((cap, b), dtype=np.int16)
        self.keys = np.zeros((cap, 3), dtype=np.int64)  # rollout, epoch, minibatch
        self.has_params = np.zeros(cap, dtype=bool)
        self.clip = np.zeros(cap, dtype=np.float32)
        self.step = np.zeros(cap, dtype=np.float64)
        self.lr = np.zeros(cap, dtype=np.float64)
        self.m = 0

    @property
    def full(self) -> bool:
        return self.m == self.capacity

    def exact_score_mask(self, coef: Tensor) -> Tensor:
        """Samples whose score is computed exactly instead of read off the cotangents."""
        alpha = coef[..., 0]
        if self.ent_on_layers and self.ent_part is not None:
            return (alpha == 0) | (alpha.abs() < coef[..., self.ent_part].abs())
        return alpha == 0

    # ------------------------------------------------------------------ per step
    def hook_outputs(self, calls: list[Any], d_entropy: list[dict[int, Tensor]] | None) -> None:
        """Copy the step's layer inputs (and entropy gradients) now, and its output cotangents
        during ``loss.backward()``."""
        m = self.m
        for slot, ly in enumerate(self.layers):
            call = calls[ly.index]
            self.ins[slot][m].copy_(call.inputs)
            call.output.register_hook(_copy_into(self.dls[slot][m]))
            dh = self.dhs[slot]
            if dh is not None:
                g = d_entropy[ly.index].get(0) if d_entropy is not None else None
                if g is None:
                    dh[m].zero_()
                else:
                    dh[m].copy_(g)

    def put_before(self, coef: Tensor, u_logp: Tensor | None, need_params: bool) -> None:
        m = self.m
        self.coef[m].copy_(coef)
        if u_logp is not None:
            self.u_logp[m].copy_(u_logp)  # type: ignore[index]
        self.has_params[m] = need_params
        if need_params:
            th._foreach_copy_([p[m] for p in self.p_before], [p.detach() for p in self.score_params])

    def put_after(self, v: list[Tensor], step: float, lr: float, clip: float, base: dict[str, Any]) -> None:
        m = self.m
        th._foreach_copy_([x[m] for x in self.v], v)
        self.step[m], self.lr[m], self.clip[m] = step, lr, clip
        self.adv[m].copy_(base["advantage_used"])
        self.ratio[m].copy_(base["ratio"])
        self.clipped[m].copy_(base["clipped"])
        self.t[m] = base["t"]
        self.env[m] = base["env"]
        self.keys[m] = (base["rollout"], base["epoch"], base["minibatch"])
        self.m += 1

    # ------------------------------------------------------------------ batch
    def flush(
        self, eps: float, betas: tuple[float, float], fetch: Callable[[np.ndarray], tuple[Any, Tensor]]
    ) -> dict[str, np.ndarray]:
        """Columns of the buffered steps (``m * batch`` rows, in recording order); empties the buffers."""
        m, b = self.m, self.batch
        fac = self._factors(eps, betas)
        coef = self.coef[:m]
        alpha = coef[..., 0]
        gamma = coef[..., self.ent_part] if self.ent_part is not None else None
        z = th.zeros(m, b)
        tot1, tot2, pg1, pgf, ent1, vf1 = z.clone(), z.clone(), z.clone(), z.clone(), z.clone(), z.clone()
        for slot, ly in enumerate(self.layers):
            a2 = self.ins[slot][:m].square()
            d = self.dls[slot][:m]
            w1, q2, q1 = self._layer_weights(ly, a2, fac, with_f=ly.actor)
            d2 = d.square()
            tot1 += d2.sum(-1) * w1
            tot2 += (d2 * q2).sum(-1)
            if not ly.actor:
                vf1 += d2.sum(-1) * w1
                continue
            dh = self.dhs[slot]
            if dh is not None and gamma is not None:
                gdh = gamma[..., None] * dh[:m]
                ds2 = (d - gdh).square()  # (alpha d^s)^2
                ent1 += gdh.square().sum(-1) * w1
            else:
                ds2 = d2
            pg1 += ds2.sum(-1) * w1
            pgf += (ds2 * q1).sum(-1)  # type: ignore[operator]
        if self.log_std is not None and id(self.log_std) in fac:
            fl, fl2 = (x[:, None, :] for x in fac[id(self.log_std)])
            us = alpha[..., None] * self.u_logp[:m]  # type: ignore[index]
            ue = (
                gamma[..., None].expand_as(us) if gamma is not None else th.zeros_like(us)
            )  # d H / d log_std = 1
            ut = us + ue
            tot1 += ut.square().sum(-1)
            tot2 += (ut.square() * fl2).sum(-1)
            pg1 += us.square().sum(-1)
            pgf += (us.square() * fl).sum(-1)
            ent1 += ue.square().sum(-1)
        clip = th.from_numpy(self.clip[:m])[:, None]
        exact = self.exact_score_mask(coef)
        safe = th.where(exact, th.ones_like(alpha), alpha)
        pg = pg1.clamp_min(0).sqrt()
        score = pg / safe.abs()
        sreinf = -clip * pgf / safe
        if bool(exact.any()):
            s2, sf = self._scores(exact, fetch, fac)
            a = alpha[exact]
            score[exact] = s2.clamp_min(0).sqrt()
            pg[exact] = a.abs() * score[exact]
            sreinf[exact] = -clip.expand_as(alpha)[exact] * a * sf
        cols = {
            "advantage_used": self.adv[:m],
            "ratio": self.ratio[:m],
            "clipped": self.clipped[:m],
            "score_norm": score,
            "pg_grad_norm": pg,
            "entropy_grad_norm": ent1.clamp_min(0).sqrt(),
            "value_grad_norm": vf1.clamp_min(0).sqrt(),
            "loss_grad_norm": tot1.clamp_min(0).sqrt(),
            "adam_update_norm": clip * tot2.clamp_min(0).sqrt(),
            "self_reinforcement": sreinf,
        }
        out = {name: col.reshape(-1).numpy().copy() for name, col in cols.items()}
        out["t"] = self.t[:m].reshape(-1).copy()
        out["env"] = self.env[:m].reshape(-1).copy()
        for j, key in enumerate(("rollout", "epoch", "minibatch")):
            out[key] = np.repeat(self.keys[:m, j], b)
        for dl in self.dls:  # a layer whose cotangent hook does not fire must read as zeros
            dl[:m].zero_()
        self.m = 0
        return out

    def _factors(self, eps: float, betas: tuple[float, float]) -> dict[int, tuple[Tensor, Tensor]]:
        """``F = scale * P`` and ``F**2`` per parameter and step, ``(M, *shape)``."""
        m = self.m
        beta1, beta2 = betas
        step, lr = th.from_numpy(self.step[:m]), th.from_numpy(self.lr[:m])
        scale = (lr * (1 - beta1) / (1 - beta1**step)).float()
        bc2_sqrt = th.sqrt(1 - beta2**step).float()
        fac = {}
        for p, v in zip(self.params, self.v, strict=True):
            shape = (-1,) + (1,) * p.dim()
            # P = 1 / (sqrt(v) / sqrt(1 - beta2^k) + eps): the denominator torch's Adam divides by
            f = scale.view(shape) / (v[:m].sqrt() / bc2_sqrt.view(shape) + eps)
            fac[id(p)] = (f, f.square())
        return fac

    def _layer_weights(
        self, ly: Layer, a2: Tensor, fac: dict[int, tuple[Tensor, Tensor]], with_f: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per sample and output unit, ``w1 = |a|^2 + 1``, ``q2 = a^2 @ (F^2)^T + F_b^2`` and, when
        asked, ``q1 = a^2 @ F^T + F_b``."""
        m, b = a2.shape[0], a2.shape[1]
        out = ly.module.out_features
        w, bias = ly.module.weight, ly.module.bias
        n_q = 2 if with_f else 1
        if w.requires_grad and id(w) in fac:
            fw, fw2 = fac[id(w)]
            q = th.bmm(a2, (th.cat([fw2, fw], 1) if with_f else fw2).transpose(1, 2))
            w1 = a2.sum(-1)
        else:
            q = th.zeros(m, b, n_q * out)
            w1 = th.zeros(m, b)
        if bias is not None and bias.requires_grad and id(bias) in fac:
            fb, fb2 = fac[id(bias)]
            q = q + (th.cat([fb2, fb], 1) if with_f else fb2)[:, None, :]
            w1 = w1 + 1.0
        return w1, q[..., :out], (q[..., out:] if with_f else None)

    def _scores(
        self,
        mask: Tensor,
        fetch: Callable[[np.ndarray], tuple[Any, Tensor]],
        fac: dict[int, tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        """``(||s||^2, <s, F s>)`` of the masked samples, exact, at their own steps' parameters.

        Each sample needs its own copy of the parameters (and of its score), so the samples are taken
        in chunks of ``SCORE_CHUNK_ELEMENTS`` floats per copy: peak memory stays bounded however many samples are clipped."""
        idx = mask.nonzero()
        s2 = th.zeros(len(idx))
        sf = th.zeros(len(idx))
        size = max(16, SCORE_CHUNK_ELEMENTS // max(1, sum(p.numel() for p in self.score_params)))
        for lo in range(0, len(idx), size):
            chunk = idx[lo : lo + size]
            s2[lo : lo + len(chunk)], sf[lo : lo + len(chunk)] = self._scores_chunk(chunk, fetch, fac)
        return s2, sf

    def _scores_chunk(
        self,
        idx: Tensor,
        fetch: Callable[[np.ndarray], tuple[Any, Tensor]],
        fac: dict[int, tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        steps, rows = idx[:, 0], idx[:, 1]
        assert self.has_params[steps.numpy()].all(), "parameters were not kept for a step that needs them"
        t = self.t[steps.numpy(), rows.numpy()].astype(np.int64)
        env = self.env[steps.numpy(), rows.numpy()].astype(np.int64)
        obs, act = fetch(np.stack([t, env], 1))
        params = {n: p[steps] for n, p in zip(self.score_names, self.p_before, strict=True)}
        grads = self.score_fn(params, obs, act)
        n = len(steps)
        s2 = th.zeros(n)
        sf = th.zeros(n)
        for name, p in zip(self.score_names, self.score_params, strict=True):
            g2 = grads[name].reshape(n, -1).square()
            s2 += g2.sum(1)
            if id(p) in fac:
                sf += (g2 * fac[id(p)][0][steps].reshape(n, -1)).sum(1)
        return s2, sf


def _copy_into(dest: Tensor) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:
        dest.copy_(grad)

    return hook
