"""Claim 1: reward acts as a per-sample learning rate.

For an unclipped sample, ``pg_grad_norm = |advantage_used| * ratio * score_norm / B`` exactly, so
log(update size) is a sum of log|A|, log ratio and log score norm. How much of the spread of update
sizes across samples each term carries is an empirical question: here measured as the R^2 of a
one-variable linear fit of log(update size) on each term, per phase of training (DuckDB ``regr_r2``
over unclipped samples with A != 0), for ``pg_grad_norm`` and for ``pg_adam_update_norm`` (the
policy-gradient term's own update after the optimizer's per-coordinate preconditioning). Since
2026-12-02 the claim reads ``pg_adam_update_norm``; ``adam_update_norm`` (the whole loss's update, the
critic's included, which at SB3 defaults is mostly the critic's) is shown beside it, as the figure read
before. Clipped samples contribute nothing to the policy-loss gradient; their share is reported per
phase.
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
    ledgers,
    new_figure,
    save_csv,
    save_figure,
)
from rledger.ledger import Ledger, Ledgers

UPDATE_COLUMNS = ("pg_grad_norm", "pg_adam_update_norm", "adam_update_norm")
PLOTTED = ("pg_grad_norm", "pg_adam_update_norm")  # the log-log panels
TERMS = {
    "log |advantage|": "ln(abs(advantage_used))",
    "log score norm": "ln(score_norm)",
    "log ratio": "ln(ratio)",
}
_VALID = "NOT clipped AND advantage_used != 0 AND {col} > 0 AND score_norm > 0"


def _phase_expr(ledger: Ledger, phases: int) -> str:
    n = max(1, int(ledger.run_info.get("rollouts_written", 1)))
    return f"LEAST(CAST(floor(rollout * {phases} / {n}) AS INTEGER), {phases - 1})"


def variance_shares(ledger: Ledger, phases: int = 5) -> pd.DataFrame:
    """Tidy (phase, update, term, r2, n): R^2 of log(update) on each log term, per training phase
    (phase k holds rollouts in the k-th of ``phases`` equal slices of the run), unclipped samples with
    nonzero advantage."""
    frames = []
    phase = _phase_expr(ledger, phases)
    for col in UPDATE_COLUMNS:
        r2s = ", ".join(f'regr_r2(ln({col}), {expr}) AS "{name}"' for name, expr in TERMS.items())
        df = ledger.sql(
            f"""SELECT {phase} AS phase, count(*) AS n, {r2s} FROM samples
                WHERE {_VALID.format(col=col)} GROUP BY phase ORDER BY phase"""
        )
        long = df.melt(id_vars=["phase", "n"], var_name="term", value_name="r2")
        long.insert(1, "update", col)
        frames.append(long)
    out = pd.concat(frames, ignore_index=True)
    return out[["phase", "update", "term", "r2", "n"]]


def clip_share(ledger: Ledger, phases: int = 5) -> pd.DataFrame:
    """Tidy (phase, clipped_share, n): the share of samples whose policy-loss gradient is zeroed by
    clipping, per training phase."""
    return ledger.sql(
        f"""SELECT {_phase_expr(ledger, phases)} AS phase, avg(clipped::INT) AS clipped_share,
            count(*) AS n FROM samples GROUP BY phase ORDER BY phase"""
    )


def loglog_counts(ledger: Ledger, column: str, bins_per_decade: int = 20) -> pd.DataFrame:
    """(x, y, count): counts of unclipped samples in square bins of log10|advantage_used| (x) and
    log10(column) (y), bin centres in log10 units; aggregated in DuckDB, never loading the table."""
    if column not in UPDATE_COLUMNS:
        raise ValueError(f"column: {column!r} is not one of {UPDATE_COLUMNS}")
    w = 1.0 / bins_per_decade
    return ledger.sql(
        f"""SELECT (floor(log10(abs(advantage_used)) / {w}) + 0.5) * {w} AS x,
                   (floor(log10({column}) / {w}) + 0.5) * {w} AS y, count(*) AS count
            FROM samples WHERE {_VALID.format(col=column)} GROUP BY x, y ORDER BY x, y"""
    )


KEYS = ["experiment", "variant", "seed"]
_RUN_PHASE = "LEAST(CAST(floor(rollout * {phases} / GREATEST(rollouts, 1)) AS INTEGER), {last})"
_WITH_RUNS = "FROM samples JOIN (SELECT experiment, variant, seed, rollouts FROM runs) USING (experiment, variant, seed)"


def variance_shares_all(led: Ledgers, phases: int = 5) -> pd.DataFrame:
    """:func:`variance_shares` of every run of ``led`` in one DuckDB query per update column: tidy
    (experiment, variant, seed, phase, update, term, r2, n)."""
    phase = _RUN_PHASE.format(phases=phases, last=phases - 1)
    frames = []
    for col in UPDATE_COLUMNS:
        r2s = ", ".join(f'regr_r2(ln({col}), {expr}) AS "{name}"' for name, expr in TERMS.items())
        df = led.sql(
            f"""SELECT experiment, variant, seed, {phase} AS phase, count(*) AS n, {r2s} {_WITH_RUNS}
                WHERE {_VALID.format(col=col)} GROUP BY ALL ORDER BY experiment, variant, seed, phase"""
        )
        long = df.melt(id_vars=[*KEYS, "phase", "n"], var_name="term", value_name="r2")
        long.insert(4, "update", col)
        frames.append(long)
    out = pd.concat(frames, ignore_index=True)
    return out[[*KEYS, "phase", "update", "term", "r2", "n"]]


def clip_share_all(led: Ledgers, phases: int = 5) -> pd.DataFrame:
    """:func:`clip_share` of every run of ``led``: (experiment, variant, seed, phase, clipped_share, n)."""
    phase = _RUN_PHASE.format(phases=phases, last=phases - 1)
    return led.sql(
        f"""SELECT experiment, variant, seed, {phase} AS phase, avg(clipped::INT) AS clipped_share,
            count(*) AS n {_WITH_RUNS} GROUP BY ALL ORDER BY experiment, variant, seed, phase"""
    )


def loglog_counts_all(led: Ledgers, column: str, bins_per_decade: int = 20) -> pd.DataFrame:
    """:func:`loglog_counts` summed over the seeds of each (experiment, variant) of ``led``."""
    if column not in UPDATE_COLUMNS:
        raise ValueError(f"column: {column!r} is not one of {UPDATE_COLUMNS}")
    w = 1.0 / bins_per_decade
    return led.sql(
        f"""SELECT experiment, variant, (floor(log10(abs(advantage_used)) / {w}) + 0.5) * {w} AS x,
                   (floor(log10({column}) / {w}) + 0.5) * {w} AS y, count(*) AS count
            FROM samples WHERE {_VALID.format(col=column)} GROUP BY ALL ORDER BY ALL"""
    )


def plot_loglog(counts: pd.DataFrame, column: str, ax: object = None) -> object:
    """Hexbin of pre-binned log-log counts (``loglog_counts``), count on a log colour scale."""
    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    if len(counts):
        ax.hexbin(
            counts.x, counts.y, C=counts["count"], reduce_C_function=np.sum, gridsize=35, bins="log",
            cmap="viridis", mincnt=1,
        )  # fmt: skip
    ax.set_xlabel("log10 |advantage_used|")
    ax.set_ylabel(f"log10 {column}")
    return ax


def plot_shares(shares: pd.DataFrame, ax: object = None) -> object:
    """R^2 of log(pg_grad_norm) on each term against the training phase."""
    import seaborn as sns

    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    data = shares[shares["update"] == "pg_grad_norm"]
    sns.lineplot(data=data, x="phase", y="r2", hue="term", marker="o", ax=ax, palette="colorblind",
                 errorbar=("ci", 95), n_boot=1000, seed=0)  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_xlabel("training phase (equal slices of rollouts)")
    ax.set_ylabel("R² of log pg_grad_norm")
    return ax


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None, phases: int = 5) -> ClaimResult:
    """Figures and CSVs of claim 1 for every (experiment, variant) under ``root``."""
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult("reward_as_learning_rate", "Reward as a per-sample learning rate")
    led = ledgers(runs)
    if not len(led) or not len(led.sql("SELECT 1 FROM samples LIMIT 1")):
        led.close()
        result.findings.append("No complete runs with a samples table were found.")
        return result
    shares = variance_shares_all(led, phases)
    clips = clip_share_all(led, phases)
    counts = pd.concat([loglog_counts_all(led, col).assign(update=col) for col in PLOTTED], ignore_index=True)
    led.close()
    counts = counts.groupby(["experiment", "variant", "update", "x", "y"], as_index=False)["count"].sum()
    result.tables += [
        save_csv(shares, out / "reward_lr_variance_shares.csv"),
        save_csv(clips, out / "reward_lr_clip_share.csv"),
        save_csv(counts, out / "reward_lr_loglog_counts.csv"),
    ]
    for (exp, variant), _ in group_runs(runs).items():
        fig, axes = new_figure(1, 3)
        sel = (counts.experiment == exp) & (counts.variant == variant)
        for ax, col in zip(axes[0, :2], PLOTTED, strict=True):
            plot_loglog(counts[sel & (counts["update"] == col)], col, ax)
        plot_shares(shares[(shares.experiment == exp) & (shares.variant == variant)], axes[0, 2])
        fig.suptitle(f"{exp} / {variant}: update size against |advantage| (unclipped samples)")
        result.figures.append(save_figure(fig, out / f"reward_lr_{exp}_{variant}"))
    # the pooled figures are PPO's as it is: runs of the advantage-permutation null (figures of their
    # own above; the null section compares them) are left out
    permuted = {(r.experiment, r.variant) for r in runs if r.config.get("permute_advantages")}
    real = shares[[k not in permuted for k in zip(shares.experiment, shares.variant, strict=True)]]
    pooled = real[real["update"] == "pg_grad_norm"].groupby("term").r2.mean()
    pooled_pg_adam = real[real["update"] == "pg_adam_update_norm"].groupby("term").r2.mean()
    pooled_adam = real[real["update"] == "adam_update_norm"].groupby("term").r2.mean()
    result.findings.append(
        ("Leaving out the advantage-permutation null's runs, across" if permuted else "Across")
        + " runs and phases, the mean R² of log pg_grad_norm is "
        + ", ".join(f"{pooled[t]:.2f} on {t}" for t in TERMS)
        + "; of log pg_adam_update_norm (the policy term's own update after Adam's scaling, which this"
        " claim reads) "
        + ", ".join(f"{pooled_pg_adam[t]:.2f} on {t}" for t in TERMS)
        + ". Beside it, the figure read before 2026-12-02, log adam_update_norm (the whole loss's update,"
        " the critic's included): " + ", ".join(f"{pooled_adam[t]:.2f} on {t}" for t in TERMS) + "."
    )
    clips = clips[[k not in permuted for k in zip(clips.experiment, clips.variant, strict=True)]]
    result.findings.append(
        f"Samples zeroed by clipping: {clips.clipped_share.mean():.1%} on average "
        f"(range {clips.clipped_share.min():.1%} to {clips.clipped_share.max():.1%} over phases and runs)."
    )
    return result
