"""Per-rollout summaries of the ledger, for SB3's TensorBoard output (and W&B through it).

Computed from a rollout's ``samples`` columns (and the actions of its ``transitions``) where the
ledger's background thread builds that table, so they cost the training thread only their writing;
each rollout's at the timesteps it ended at (:func:`write`). Keys (all under ``ledger/``):

- ``r2_log_update_on_log_abs_advantage``: R^2 of the one-variable least-squares fit of
  ``ln(pg_grad_norm)`` on ``ln|advantage_used|`` over the rollout's samples that are not clipped,
  with ``advantage_used != 0``, ``pg_grad_norm > 0`` and ``score_norm > 0`` (as the learning-rate
  analysis's per-phase figure, ``regr_r2`` there);
- ``clipped_share``: the share of samples whose policy-loss gradient clipping zeroed;
- ``self_reinforcement/action_<a>``: the sum of ``self_reinforcement`` over the samples of action
  ``a`` (every action seen in the rollout; for ``Discrete`` action spaces, when transitions are
  recorded, which hold the actions);
- ``rollout``: the rollout they describe (the ledger's numbering).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def rollout_summary(
    rollout: int, samples: dict[str, np.ndarray] | None, actions: np.ndarray | None, n_envs: int
) -> dict[str, float]:
    """The summary of one rollout; ``actions``: its transitions' actions, rows ``t * n_envs + env``
    (None when they were not recorded or are not discrete)."""
    out: dict[str, float] = {"ledger/rollout": float(rollout)}
    if samples is None or not len(samples["pg_grad_norm"]):
        return out
    g = samples["pg_grad_norm"].astype(np.float64)
    a = samples["advantage_used"].astype(np.float64)
    ok = ~samples["clipped"] & (a != 0) & (g > 0) & (samples["score_norm"] > 0)
    out["ledger/clipped_share"] = float(np.mean(samples["clipped"]))
    if ok.sum() >= 2:
        out["ledger/r2_log_update_on_log_abs_advantage"] = r2(np.log(np.abs(a[ok])), np.log(g[ok]))
    if actions is not None and actions.ndim == 2 and actions.shape[1] == 1:
        rows = samples["t"].astype(np.int64) * n_envs + samples["env"].astype(np.int64)
        act = actions[rows, 0].astype(np.int64)
        sr = samples["self_reinforcement"].astype(np.float64)
        sums = np.bincount(act, weights=sr)
        for k in np.unique(act):
            out[f"ledger/self_reinforcement/action_{int(k)}"] = float(sums[k])
    return out


def r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares line of ``y`` on ``x`` (the squared correlation), with DuckDB's
    ``regr_r2`` conventions: NaN when ``x`` is constant, 1 when only ``y`` is."""
    # elementwise sums, not ``x @ x``: a BLAS call wakes numpy's OpenBLAS threads, which cost
    # 20 ms of CPU a call on a machine whose cores are busy (measured; 0.1 ms on an idle one)
    x = x - x.mean()
    y = y - y.mean()
    sxx, syy = float(np.sum(x * x)), float(np.sum(y * y))
    if sxx == 0:
        return float("nan")
    if syy == 0:
        return 1.0
    return float(np.sum(x * y) ** 2 / (sxx * syy))


def write(logger: Any, summaries: list[dict[str, float]], steps: dict[int, int], default_step: int) -> None:
    """Write each summary to the TensorBoard outputs of SB3's ``logger`` at the timesteps its rollout
    ended at (``steps``: rollout -> timesteps, whose entries are taken out; ``default_step`` when
    unknown), one dump per rollout, through a second SB3 ``Logger`` on the same output formats: SB3's
    own values and the timing of its dumps are left alone, and no rollout's values replace another's."""
    at = [steps.pop(int(summary["ledger/rollout"]), default_step) for summary in summaries]
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

    formats = [f for f in getattr(logger, "output_formats", []) if isinstance(f, TensorBoardOutputFormat)]
    if not summaries or not formats:
        return
    side = Logger(folder=None, output_formats=formats)
    for summary, step in zip(summaries, at, strict=True):
        for key, value in summary.items():
            side.record(key, value)
        side.dump(step=step)
