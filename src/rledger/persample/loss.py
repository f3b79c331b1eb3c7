"""PPO's loss, sample by sample: its terms, their per-sample coefficients, and the optimizer's step scale.

Sample ``i``'s loss gradient is ``g_i = sum_f c_i^f grad f_i`` over the loss *parts* f in
(log pi, [H], V). This module holds the coefficients ``c_i^f`` (:func:`loss_coefficients`), the global
clipping factor (:func:`clip_coefs`), each optimizer's per-coordinate step scale ``F`` (the factor that
turns a gradient term into its share of the step: :func:`adam_step_factor`, :func:`sgd_step_factor`),
and the columns of the ``samples`` table as functions of the per-sample Gram matrices of the parts
(:func:`columns`). Pure tensor code: no module, no optimizer object, no stable-baselines3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch as th
from torch import Tensor


@dataclass
class LossTerms:
    """The per-sample inputs of SB3's PPO loss: ``(B,)`` tensors of one minibatch, or ``(S, B)`` of many steps."""

    advantages: Tensor  # as used (normalized or not)
    ratio: Tensor
    clip_range: float | Tensor  # or (S, 2) float64 bounds (1 - eps, 1 + eps) of many steps
    values: Tensor  # current V(s), flattened
    old_values: Tensor
    returns: Tensor
    clip_range_vf: float | Tensor | None  # or (S, 2) bounds (-eps_vf, eps_vf)
    ent_coef: float
    vf_coef: float


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

    @classmethod
    def of(cls, terms: LossTerms, has_entropy: bool) -> Parts:
        """The parts of a loss with these terms (``has_entropy``: the distribution has an analytic entropy)."""
        ent = terms.ent_coef != 0
        return cls(
            k=3 if ent and has_entropy else 2,
            ent_part=1 if ent and has_entropy else None,
            ent_logp=ent and not has_entropy,
            clip_vf=terms.clip_range_vf is not None,
            ent_coef=float(terms.ent_coef),
            vf_coef=float(terms.vf_coef),
        )


def loss_coefficients(
    terms: LossTerms, has_entropy: bool
) -> tuple[Tensor, Tensor, int | None, Tensor | None, Tensor]:
    """Per-sample coefficients of the loss parts: ``d loss / d f_i`` for f in (log pi, [H], V).

    Closed forms of the derivatives autograd takes through SB3's loss: the clipped surrogate
    ``-mean(min(A r, A clamp(r)))`` gives ``-A r / B`` unless clipping is active (then 0; at the exact
    clip bound ``min`` ties and ``clamp`` passes the gradient, so the sample is not clipped); the value
    loss ``vf_coef * mean((R - V_pred)^2)`` gives ``2 vf_coef (V_pred - R) / B``, times 0 where
    ``clip_range_vf`` clamps; the entropy loss ``-ent_coef * mean(H)`` gives ``-ent_coef / B`` (or
    ``+ent_coef / B`` on log pi when the distribution has no analytic entropy).
    Returns (coef ``(B, K)``, alpha ``(B,)``, index of the entropy part or None, entropy-on-log-pi
    coefficient or None, the ``clipped`` flags ``(B,)``).
    """
    a, r = terms.advantages.detach(), terms.ratio.detach()
    batch = a.shape[-1]
    lo, hi = _bounds(terms.clip_range, 1.0)
    clamped = th.clamp(r, lo, hi)
    clipped = ((a > 0) & (r > clamped)) | ((a < 0) & (r < clamped))
    alpha = th.where(clipped, th.zeros_like(r), -(a * r) / batch)
    v = terms.values.detach()
    if terms.clip_range_vf is None:
        v_pred = v
        vmask = None
    else:
        vlo, vhi = _bounds(terms.clip_range_vf, 0.0)
        diff = v - terms.old_values
        v_pred = terms.old_values + th.clamp(diff, vlo, vhi)
        vmask = (diff >= vlo) & (diff <= vhi)
    beta = (2.0 * terms.vf_coef / batch) * (v_pred - terms.returns)
    if vmask is not None:
        beta = th.where(vmask, beta, th.zeros_like(beta))
    coefs = [alpha]
    ent_part, ent_logp = None, None
    if terms.ent_coef != 0:
        if has_entropy:
            ent_part = 1
            coefs.append(th.full_like(alpha, -terms.ent_coef / batch))
        else:
            ent_logp = th.full_like(alpha, terms.ent_coef / batch)
            coefs[0] = alpha + ent_logp
    coefs.append(beta)
    return th.stack(coefs, -1), alpha, ent_part, ent_logp, clipped


def _bounds(clip: float | Tensor, center: float) -> tuple[Any, Any]:
    """``(center - clip, center + clip)``: Python floats as SB3 passes them to ``th.clamp`` (which
    rounds them to float32), or per-step ``(S, 2)`` float64 bounds rounded the same way."""
    if isinstance(clip, Tensor):
        b = clip.float()
        return b[:, :1], b[:, 1:]
    return center - clip, center + clip


def clip_coefs(grad_norms: Tensor, max_norm: float) -> Tensor:
    """The factor ``clip_grad_norm_`` scaled the gradients by, ``min(1, max_norm / (norm + 1e-6))``,
    from the total norms it returned, computed as torch computes it (float32, same expression);
    elementwise, so one call gives many steps' factors, bitwise as one call per step would (tested)."""
    with th.no_grad():
        return th.clamp(max_norm / (grad_norms + 1e-6), max=1.0)


def adam_step_factor(
    v: Tensor, step: Tensor, lr: Tensor, betas: tuple[float, float], eps: float, out: Tensor | None = None
) -> Tensor:
    """Adam's (and AdamW's) per-coordinate step scale ``F = lr (1 - beta1) / (1 - beta1^k) / (sqrt(v) /
    sqrt(1 - beta2^k) + eps)`` of ``S`` steps: ``v`` ``(S, n)`` the second moments after step ``k``
    (so they include the step's own gradient: the denominator step ``k`` divided by), ``step`` and
    ``lr`` ``(S,)`` float64. ``F * g`` is the part of the step that a gradient term ``g`` makes through
    the fresh share of the first moment. The denominator is computed as torch's Adam computes it
    (float32, ``sqrt(v) / sqrt(1 - beta2^k) + eps``). ``out``: where to write ``F`` (may be ``v``)."""
    beta1, beta2 = betas
    scale = (lr * (1 - beta1) / (1 - beta1**step)).float()
    bc2_sqrt = th.sqrt(1 - beta2**step).float()
    den = th.sqrt(v, out=out) if out is not None else v.sqrt()
    den.div_(bc2_sqrt[:, None]).add_(eps)
    return th.div(scale[:, None], den, out=den)


def sgd_step_factor(n: int, lr: float, device: th.device | str = "cpu") -> Tensor:
    """Plain SGD's step scale (no momentum): ``F = lr`` for each of ``n`` coordinates, ``(1, n)``."""
    return th.full((1, n), float(lr), device=device)


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
    # clipping zeroed the step: every share of it is 0 (not 0 * inf)
    no_step = th.as_tensor(clip, device=score.device) == 0

    def share(x: Tensor) -> Tensor:
        return th.where(no_step, th.zeros_like(x), clip * x)

    adam = share(th.einsum("...k,...kl,...l->...", c, gp2, c).clamp_min(0).sqrt())
    # each term's own share of the step: |coefficient| * ||F grad f|| (times the global clip factor)
    score_f = gp2[..., 0, 0].clamp_min(0).sqrt()
    pg_adam = share(alpha.abs() * score_f)
    if ent_part is not None:
        ent_adam = share(c[..., ent_part].abs() * gp2[..., ent_part, ent_part].clamp_min(0).sqrt())
    elif ent_logp is not None:
        ent_adam = share(ent_logp.abs() * score_f)
    else:
        ent_adam = th.zeros_like(score)
    vf_adam = share(c[..., -1].abs() * gp2[..., -1, -1].clamp_min(0).sqrt())
    self_reinf = th.where(no_step, th.zeros_like(gp00), -clip * alpha * gp00)
    return {
        "score_norm": score,
        "pg_grad_norm": pg,
        "entropy_grad_norm": ent,
        "value_grad_norm": vf,
        "loss_grad_norm": total,
        "adam_update_norm": adam,
        "pg_adam_update_norm": pg_adam,
        "entropy_adam_update_norm": ent_adam,
        "value_adam_update_norm": vf_adam,
        "self_reinforcement": self_reinf,
    }
