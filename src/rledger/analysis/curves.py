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
    ledgers,
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


def episode_curves(runs: list[RunInfo], bins: int = 20) -> pd.DataFrame:
    """:func:`episode_curve` of every run, in one DuckDB query over their ledgers
    (:class:`rledger.Ledgers`): tidy (experiment, variant, seed, step, metric, value, episodes)."""
    cols = ["experiment", "variant", "seed", "step", "metric", "value", "episodes"]
    if not runs:
        return pd.DataFrame(columns=cols)
    led = ledgers(runs)
    # a run's length: its timesteps, or its config's budget when run.json has none (as episode_curve)
    budget = pd.DataFrame(
        {"experiment": [r.experiment for r in runs], "variant": [r.variant for r in runs],
         "seed": [r.seed for r in runs], "budget": [int(r.config["total_timesteps"]) for r in runs]}
    )  # fmt: skip
    led.con.register("_budget", budget)
    has_perf = PERFORMANCE in set(led.sql("SELECT * FROM episodes LIMIT 0").columns)
    perf = f', avg("{PERFORMANCE}") AS performance' if has_perf else ""
    df = led.sql(
        f"""WITH r AS (SELECT experiment, variant, seed, steps_per_rollout AS per,
                   GREATEST(1, CASE WHEN num_timesteps > 0 THEN num_timesteps ELSE budget END) AS total
                   FROM runs JOIN _budget USING (experiment, variant, seed))
            SELECT experiment, variant, seed, ANY_VALUE(total) AS total,
                   LEAST(CAST(floor((rollout + 1) * per * {bins} / total) AS INTEGER), {bins - 1}) AS bin,
                   avg("return") AS "return"{perf}, count(*) AS episodes
            FROM episodes JOIN r USING (experiment, variant, seed)
            GROUP BY experiment, variant, seed, bin ORDER BY experiment, variant, seed, bin"""
    )
    led.close()
    df["step"] = ((df["bin"] + 1) * df["total"] / bins).round().astype(np.int64)
    df = df.drop(columns=["bin", "total"])
    long = df.melt(
        id_vars=["experiment", "variant", "seed", "step", "episodes"], var_name="metric", value_name="value"
    )
    # a run that does not record the performance key has no such metric (not a NaN row)
    long = long[~((long.metric == "performance") & long.value.isna())]
    # rows as episode_curve gives them, run after run: return's slices, then performance's
    order = long.metric.map({"return": 0, "performance": 1})
    long = long.assign(_m=order).sort_values(["experiment", "variant", "seed", "_m", "step"], kind="stable")
    return long[cols].reset_index(drop=True)


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
    table = episode_curves(runs, bins)
    if table.empty:
        result.findings.append("No complete runs were found.")
        return result
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
