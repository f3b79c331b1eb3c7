"""Probe 5, reward as a learning rate: which parts of PPO carry the reward's scale into the policy.

Reads what ``python -m rledger.probes.reward_scale OUT`` (or the quickstart) wrote beside the sweep's
runs (``OUT/reward_scale/sweep.csv``, ``OUT/reward_scale/identity.json``; found as ``reward_scale/``
under the report's root or one folder below it): for each PPO setting (SB3 defaults; without global
gradient clipping; without it and with a zero, untrained critic) and each (c, b), how far the actor's
parameters end from the baseline's (c=1, b=0), the share of states whose greedy action changed, and
how often global gradient clipping engaged; and the plain-SGD identity (reward x c, lr) = (reward, lr x c).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rledger.analysis.common import ClaimResult, new_figure, save_csv, save_figure


def find_sweeps(root: str | Path) -> list[Path]:
    """reward_scale folders holding a sweep (sweep.csv) or the plain-SGD identity (identity.json)."""
    root = Path(root)
    files = [
        root.glob(f"{pre}reward_scale/{name}")
        for pre in ("", "*/")
        for name in ("sweep.csv", "identity.json")
    ]
    return sorted({p.parent for found in files for p in found})


def summarize_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (setting, c, b) of every measured column, and the number of seeds."""
    cols = [
        "rollout0_ratio_diff", "rollout0_adv_diff", "first_minibatch_adv_diff", "actor_rel_diff", "actor_max_diff",
        "same_greedy_action", "clip_engaged", "value_loss",
    ]  # fmt: skip
    g = table.groupby(["setting", "c", "b"], sort=False)
    out = g[cols].mean().reset_index()
    out["n_seeds"] = g.size().to_numpy()
    return out


def plot_sweep(summary: pd.DataFrame, column: str, ax: object = None, label: str = "") -> object:
    """Bars of ``column`` per (c, b), one colour per setting, log scale; the baseline is left out."""
    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    data = summary[~((summary.c == 1) & (summary.b == 0))]
    pairs = list(dict.fromkeys(zip(data.c, data.b, strict=True)))
    settings = list(dict.fromkeys(data.setting))
    width = 0.8 / len(settings)
    for j, s in enumerate(settings):
        d = data[data.setting == s].set_index(["c", "b"]).reindex(pairs)
        x = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(pairs))]
        ax.bar(x, d[column].clip(lower=1e-9), width=width, label=s, color=f"C{j}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([f"c={c:g}\nb={b:g}" for c, b in pairs], fontsize=7)
    ax.set_ylabel(label or column, fontsize=8)
    ax.legend(fontsize=6, loc="lower left", framealpha=0.9)
    return ax


def run(root: str | Path, out: str | Path, runs: object = None) -> ClaimResult:
    out = Path(out)
    result = ClaimResult("reward_scale", "Reward scale: which parts of PPO carry it into the policy")
    sweeps = find_sweeps(root)
    if not sweeps:
        result.findings.append(
            "No reward-scale sweep under this folder; `python -m rledger.probes.reward_scale DIR` runs it."
        )
        return result
    for folder in sweeps:
        if not (folder / "sweep.csv").is_file():
            _identity(folder, result)
            continue
        table = pd.read_csv(folder / "sweep.csv")
        summary = summarize_sweep(table)
        result.tables.append(save_csv(summary, out / "reward_scale_summary.csv"))
        fig, axes = new_figure(1, 2, width=5.2)
        plot_sweep(
            summary, "rollout0_ratio_diff", axes[0, 0], "first rollout (same data): max |ratio difference|"
        )
        plot_sweep(
            summary, "actor_rel_diff", axes[0, 1], "end of training: actor difference / largest parameter"
        )
        fig.suptitle(
            f"reward c*r+b against r from one seed, mean over {summary.n_seeds.max()} seeds", fontsize=9
        )
        result.figures.append(save_figure(fig, out / "reward_scale_sweep"))
        for s, g in summary.groupby("setting", sort=False):
            g = g[~((g.c == 1) & (g.b == 0))]
            result.findings.append(
                f"{s} (global clipping engaged on {g.clip_engaged.min():.0%}-{g.clip_engaged.max():.0%} of steps): "
                + "; ".join(
                    f"c={r.c:g}, b={r.b:g}: first-rollout advantages differ by up to {r.rollout0_adv_diff:.1e} and "
                    f"ratios by {r.rollout0_ratio_diff:.1e}; at the end the actor differs by {r.actor_rel_diff:.1e} of "
                    f"its largest parameter, greedy action unchanged in {r.same_greedy_action:.0%} of states"
                    for r in g.itertuples()
                )
                + "."
            )
        _identity(folder, result)
    return result


def _identity(folder: Path, result: ClaimResult) -> None:
    identity = folder / "identity.json"
    if identity.is_file():
        for key, v in json.loads(identity.read_text()).items():
            result.findings.append(
                f"Plain SGD, no normalization or clipping, zero critic, {key} (`python -m rledger.probes.reward_scale "
                f"OUT --identity`): (reward x c, lr) and (reward, lr x c) end {v['max_diff_reward_x_c_vs_lr_x_c']:.1e} "
                f"apart (largest parameter {v['max_abs_param']:.2f}); (reward, lr) and (reward, lr x c) end "
                f"{v['max_diff_lr_vs_lr_x_c']:.1e} apart."
            )
