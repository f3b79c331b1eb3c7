"""The fast path's batch engine: per-sample columns from the training backward's own cotangents.

When no Linear layer carries more than one loss part (actor and critic share no trainable layer and the
entropy, if weighted, does not flow through the actor's layers), the cotangent that ``loss.backward()``
itself sends into layer ``j``'s output is ``D_i = c_i^f d_i^f``: the part's per-sample coefficient times
the part's own output gradient. Tensor hooks copy these cotangents, and forward hooks the layer inputs,
into preallocated slot buffers; after many optimizer steps one batched computation turns them into
columns. With the *scaled* Gram matrices ``G~ = (c c^T) * G``:

- ``pg_grad_norm = sqrt(G~1[s,s])``, ``value_grad_norm = sqrt(G~1[V,V])``,
  ``entropy_grad_norm = sqrt(G~1[H,H])``, ``loss_grad_norm = sqrt(sum G~1)``,
  ``adam_update_norm = clip * sqrt(sum G~F2)``,
- ``score_norm = pg_grad_norm / |alpha|`` and ``self_reinforcement = -clip * G~F[s,s] / alpha``
  where ``alpha != 0``. Samples with ``alpha = 0`` (clipped) have self-reinforcement 0, and their score
  norm is computed exactly from per-sample gradients (``torch.func``) at the parameters of their step,
  which the buffers keep for steps that have such samples.

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


@dataclass
class Layer:
    index: int  # position of the call in the forward pass
    module: nn.Linear
    part: int  # the one loss part whose cotangent flows into this layer's output


class CotangentBatch:
    """Slot buffers for up to ``capacity`` optimizer steps of minibatches of ``batch`` samples."""

    def __init__(
        self,
        layers: list[Layer],
        params: list[nn.Parameter],
        score_params: list[nn.Parameter],
        score_names: list[str],
        k: int,
        ent_part: int | None,
        batch: int,
        steps_hint: int,
        log_std: nn.Parameter | None,
        score_fn: Callable[[dict[str, Tensor], Any, Tensor], Tensor],
    ):
        self.layers, self.params = layers, params
        self.score_params, self.score_names = score_params, score_names
        self.k, self.ent_part, self.batch, self.log_std = k, ent_part, batch, log_std
        self.score_fn = score_fn
        n_params = sum(p.numel() for p in params)
        n_score = sum(p.numel() for p in score_params)
        per_step = (
            batch * sum(ly.module.in_features + ly.module.out_features for ly in layers) + n_params + n_score
        )
        per_step += batch * (k + 4 + (log_std.numel() if log_std is not None else 0))
        self.capacity = int(max(1, min(steps_hint, MAX_BUFFER_ELEMENTS // max(per_step, 1))))
        cap, b = self.capacity, batch
        self.ins = [th.zeros(cap, b, ly.module.in_features) for ly in layers]
        self.dls = [th.zeros(cap, b, ly.module.out_features) for ly in layers]
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

    # ------------------------------------------------------------------ per step
    def hook_outputs(self, calls: list[Any]) -> None:
        """Copy the step's layer inputs now and its output cotangents during ``loss.backward()``."""
        m = self.m
        for slot, ly in enumerate(self.layers):
            call = calls[ly.index]
            self.ins[slot][m].copy_(call.inputs)
            call.output.register_hook(_copy_into(self.dls[slot][m]))

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
        m, b, k = self.m, self.batch, self.k
        beta1, beta2 = betas
        step, lr = th.from_numpy(self.step[:m]), th.from_numpy(self.lr[:m])
        scale = (lr * (1 - beta1) / (1 - beta1**step)).float()
        bc2_sqrt = th.sqrt(1 - beta2**step).float()
        fac: dict[int, tuple[Tensor, Tensor]] = {}
        for p, v in zip(self.params, self.v, strict=True):
            shape = (-1,) + (1,) * p.dim()
            # F = scale * P, P = 1 / (sqrt(v) / sqrt(1 - beta2^k) + eps): as torch's Adam divides
            f = scale.view(shape) / (v[:m].sqrt() / bc2_sqrt.view(shape) + eps)
            fac[id(p)] = (f, f.square())
        g1 = th.zeros(m, b, k, k)
        gp2 = th.zeros(m, b, k, k)
        gp00 = th.zeros(m, b)  # only <s, F s> is needed with Q = F
        for slot, ly in enumerate(self.layers):
            part = ly.part
            a2 = self.ins[slot][:m].square()
            d2 = self.dls[slot][:m].square()
            w, bias = ly.module.weight, ly.module.bias
            w1 = th.zeros(m, b)
            qp2 = th.zeros_like(d2)
            qp = th.zeros_like(d2) if part == 0 else None
            if w.requires_grad and id(w) in fac:
                fw, fw2 = fac[id(w)]
                qp2 = th.baddbmm(qp2, a2, fw2.transpose(1, 2))
                if qp is not None:
                    qp = th.baddbmm(qp, a2, fw.transpose(1, 2))
                w1 = w1 + a2.sum(-1)
            if bias is not None and bias.requires_grad and id(bias) in fac:
                fb, fb2 = fac[id(bias)]
                qp2 = qp2 + fb2[:, None, :]
                if qp is not None:
                    qp = qp + fb[:, None, :]
                w1 = w1 + 1.0
            g1[:, :, part, part] += d2.sum(-1) * w1
            gp2[:, :, part, part] += (d2 * qp2).sum(-1)
            if qp is not None:
                gp00 += (d2 * qp).sum(-1)
        coef = self.coef[:m]
        if self.log_std is not None and id(self.log_std) in fac:
            fl, fl2 = (x[:, None, :] for x in fac[id(self.log_std)])
            u = {0: coef[:, :, 0, None] * self.u_logp[:m]}  # type: ignore[index]
            if self.ent_part is not None:  # d H / d log_std = 1 per dimension
                u[self.ent_part] = coef[:, :, self.ent_part, None].expand_as(u[0])
            keys = sorted(u)
            for x, f in enumerate(keys):
                for h in keys[x:]:
                    prod = u[f] * u[h]
                    s1, s2 = prod.sum(-1), (prod * fl2).sum(-1)
                    g1[:, :, f, h] += s1
                    gp2[:, :, f, h] += s2
                    if f != h:
                        g1[:, :, h, f] += s1
                        gp2[:, :, h, f] += s2
                    elif f == 0:
                        gp00 += (prod * fl).sum(-1)
        alpha = coef[..., 0]
        clip = th.from_numpy(self.clip[:m])[:, None]
        live = alpha != 0
        safe = th.where(live, alpha, th.ones_like(alpha))
        pg = g1[..., 0, 0].clamp_min(0).sqrt()
        score = th.where(live, pg / safe.abs(), th.zeros_like(pg))
        if not bool(live.all()):
            score[~live] = self._scores(~live, fetch)
        ones = th.ones(k)
        ent = g1[..., self.ent_part, self.ent_part].clamp_min(0).sqrt() if self.ent_part is not None else None
        cols = {
            "advantage_used": self.adv[:m],
            "ratio": self.ratio[:m],
            "clipped": self.clipped[:m],
            "score_norm": score,
            "pg_grad_norm": pg,
            "entropy_grad_norm": ent if ent is not None else th.zeros_like(pg),
            "value_grad_norm": g1[..., -1, -1].clamp_min(0).sqrt(),
            "loss_grad_norm": (g1 @ ones @ ones).clamp_min(0).sqrt(),
            "adam_update_norm": clip * (gp2 @ ones @ ones).clamp_min(0).sqrt(),
            "self_reinforcement": th.where(live, -clip * gp00 / safe, th.zeros_like(pg)),
        }
        out = {name: col.reshape(-1).numpy().copy() for name, col in cols.items()}
        out["t"] = self.t[:m].reshape(-1).copy()
        out["env"] = self.env[:m].reshape(-1).copy()
        for j, key in enumerate(("rollout", "epoch", "minibatch")):
            out[key] = np.repeat(self.keys[:m, j], b)
        for d in self.dls:  # a layer whose cotangent hook does not fire must read as zeros
            d[:m].zero_()
        self.m = 0
        return out

    def _scores(self, mask: Tensor, fetch: Callable[[np.ndarray], tuple[Any, Tensor]]) -> Tensor:
        """Exact ||grad log pi|| of the masked samples at their own steps' parameters."""
        idx = mask.nonzero()
        steps, rows = idx[:, 0], idx[:, 1]
        assert self.has_params[steps.numpy()].all(), (
            "parameters were not kept for a step with clipped samples"
        )
        t = self.t[steps.numpy(), rows.numpy()].astype(np.int64)
        env = self.env[steps.numpy(), rows.numpy()].astype(np.int64)
        obs, act = fetch(np.stack([t, env], 1))
        params = {n: p[steps] for n, p in zip(self.score_names, self.p_before, strict=True)}
        return self.score_fn(params, obs, act)


def _copy_into(dest: Tensor) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:
        dest.copy_(grad)

    return hook
