"""Probe 5, reward as a learning rate: which parts of PPO carry the reward's scale into the policy.

Reads what ``python -m rledger.probes.reward_scale OUT`` wrote (``OUT/sweep.csv``, ``OUT/identity.json``;
found as ``reward_scale/`` under the report's root): for each PPO setting (SB3 defaults; without global
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
    root = Path(root)
    return sorted(
        {p.parent for p in [*root.glob("reward_scale/sweep.csv"), *root.glob("*/reward_scale/sweep.csv")]}
    )


def summarize_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (setting, c, b) of every measured column, and the number of seeds."""
    cols = [
        "actor_rel_diff",
        "actor_max_diff",
        "same_greedy_action",
        "clip_engaged",
        "value_loss",
        "first_minibatch_adv_diff",
    ]
    g = table.groupby(["setting", "c", "b"], sort=False)
    out = g[cols].mean().reset_index()
    out["n_seeds"] = g.size().to_numpy()
    return out


def plot_sweep(summary: pd.DataFrame, ax: object = None) -> object:
    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    data = summary[~((summary.c == 1) & (summary.b == 0))]
    labels = [
        f"c={c:g}, b={b:g}" for c, b in data.drop_duplicates(["c", "b"])[["c", "b"]].itertuples(index=False)
    ]
    settings = list(dict.fromkeys(data.setting))
    width = 0.8 / len(settings)
    for j, s in enumerate(settings):
        d = data[data.setting == s]
        x = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(d))]
        ax.bar(x, d.actor_rel_diff.clip(lower=1e-9), width=width, label=s, color=f"C{j}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, fontsize=7)
    ax.set_ylabel("actor parameter difference / largest parameter")
    ax.legend(fontsize=7)
    return ax


def run(root: str | Path, out: str | Path, runs: object = None) -> ClaimResult:
    out = Path(out)
    result = ClaimResult("reward_scale", "Reward scale: which parts of PPO carry it into the policy")
    sweeps = find_sweeps(root)
    if not sweeps:
        result.findings.append(
            "No reward-scale sweep under this folder; `python -m rledger.probes.reward_scale DIR/reward_scale` runs it."
        )
        return result
    for folder in sweeps:
        table = pd.read_csv(folder / "sweep.csv")
        summary = summarize_sweep(table)
        result.tables.append(save_csv(summary, out / "reward_scale_summary.csv"))
        fig, axes = new_figure(1, 1, width=7.0)
        plot_sweep(summary, axes[0, 0])
        axes[0, 0].set_title(f"reward c*r+b vs r, {summary.n_seeds.max()} seeds, mean over seeds", fontsize=9)
        result.figures.append(save_figure(fig, out / "reward_scale_sweep"))
        for s, g in summary.groupby("setting", sort=False):
            g = g[~((g.c == 1) & (g.b == 0))]
            result.findings.append(
                f"{s}: actor differs from the baseline by "
                + ", ".join(
                    f"{r.actor_rel_diff:.1e} (greedy action same in {r.same_greedy_action:.0%} of states) at c={r.c:g}, b={r.b:g}"
                    for r in g.itertuples()
                )
                + f"; global clipping engaged on {g.clip_engaged.min():.0%}-{g.clip_engaged.max():.0%} of steps."
            )
        identity = folder / "identity.json"
        if identity.is_file():
            for key, v in json.loads(identity.read_text()).items():
                result.findings.append(
                    f"Plain SGD, no normalization or clipping, zero critic, {key}: (reward x c, lr) and (reward, lr x c) "
                    f"end {v['max_diff_reward_x_c_vs_lr_x_c']:.1e} apart (largest parameter {v['max_abs_param']:.2f}); "
                    f"(reward, lr) and (reward, lr x c) end {v['max_diff_lr_vs_lr_x_c']:.1e} apart."
                )
    return result
