"""Claim 5: learning curves. Return and hidden performance over training, per experiment and variant:
the per-seed mean of finished episodes in each of ``bins`` equal slices of the run's timesteps, drawn
as the mean over seeds with a seeded 95% bootstrap band (seaborn, 1,000 resamples).

An episode's timestep is the end of the rollout it finished in, ``(rollout + 1) * n_steps * n_envs``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rledger.analysis.common import (
    ClaimResult,
    RunInfo,
    find_runs,
    group_runs,
    new_figure,
    save_csv,
    save_figure,
)

PERFORMANCE = "hidden_reward"


def episode_curve(run: RunInfo, bins: int = 20) -> pd.DataFrame:
    """Tidy (step, metric, value, episodes): mean return (and hidden performance, when recorded) of the
    episodes that finished in each of ``bins`` slices of training; ``step`` is the slice's end."""
    ledger = run.ledger
    total = max(1, int(ledger.run_info.get("num_timesteps") or run.config["total_timesteps"]))
    per = run.steps_per_rollout
    perf = f', avg("{PERFORMANCE}") AS performance' if PERFORMANCE in ledger.info_keys else ""
    df = ledger.sql(
        f"""SELECT LEAST(CAST(floor((rollout + 1) * {per} * {bins} / {total}) AS INTEGER), {bins - 1})
                   AS bin, avg("return") AS "return"{perf}, count(*) AS episodes
            FROM episodes GROUP BY bin ORDER BY bin"""
    )
    ledger.close()
    df["step"] = ((df["bin"] + 1) * total / bins).round().astype(np.int64)
    long = df.drop(columns="bin").melt(id_vars=["step", "episodes"], var_name="metric", value_name="value")
    return long[["step", "metric", "value", "episodes"]]


def plot_curves(table: pd.DataFrame, metric: str, ax: object = None) -> object:
    import seaborn as sns

    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    sns.lineplot(data=table[table.metric == metric], x="step", y="value", hue="variant", ax=ax,
                 palette="colorblind", errorbar=("ci", 95), n_boot=1000, seed=0)  # fmt: skip
    ax.set_xlabel("timesteps")
    ax.set_ylabel({"return": "episode return", "performance": "hidden performance"}.get(metric, metric))
    return ax


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None, bins: int = 20) -> ClaimResult:
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult("learning_curves", "Learning curves")
    frames = []
    for (exp, variant), group in group_runs(runs).items():
        for r in group:
            frames.append(episode_curve(r, bins).assign(experiment=exp, variant=variant, seed=r.seed))
    if not frames:
        result.findings.append("No complete runs were found.")
        return result
    table = pd.concat(frames, ignore_index=True)
    table = table[["experiment", "variant", "seed", "step", "metric", "value", "episodes"]]
    result.tables.append(save_csv(table, out / "curves.csv"))
    for exp, g in table.groupby("experiment"):
        metrics = [m for m in ("return", "performance") if m in set(g.metric)]
        fig, axes = new_figure(1, len(metrics))
        for ax, m in zip(axes[0], metrics, strict=True):
            plot_curves(g, m, ax)
        fig.suptitle(f"{exp}: mean over {g.seed.nunique()} seeds, 95% bootstrap band")
        result.figures.append(save_figure(fig, out / f"curves_{exp}"))
        last = g[g.step == g.step.max()].groupby(["variant", "metric"]).value.mean()
        result.findings.append(
            f"{exp}, last slice of training: "
            + "; ".join(f"{v} {m} {val:.2f}" for (v, m), val in last.items())
            + "."
        )
    return result
