"""Persistence of a slightly worse habit (``experiments/habit_persist.yaml``): an opening phase pays a
bonus for a detour through a waypoint, then the same model trains ten times longer on the true reward,
under which the detour is a little worse; a control trains on the true reward from the start.

From the ledgers, per seed, over the rollouts after the opening (the control: the same rollout
numbers: :func:`rledger.analysis.chisel.opening_rollouts` of its paired run):

- habit rate: the share of the episodes ending in a rollout that entered the waypoint (the episodes
  table's summed ``waypoint`` flag > 0);
- persistence: rollouts after the opening until the habit rate, averaged over :data:`WINDOW` rollouts
  (trailing), first falls to :data:`GONE` or below; censored (NaN, counted) when it never does;
- reinforcement: per rollout, the mean ``self_reinforcement`` per sample (every epoch's) of the
  transitions of episodes that entered the waypoint (``detour``) and of those that did not
  (``corridor``); samples of episodes still running at the run's end are left out.

The spec's predictions H1 and H2 (written before the runs) are tested by :func:`tests`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rledger import stats
from rledger.analysis.chisel import opening_rollouts
from rledger.analysis.common import ClaimResult, RunInfo, find_runs, new_figure, save_csv, save_figure

EXPERIMENT = "habit_persist"
HABIT, CONTROL = "plain", "control"
FLAG = "waypoint"
WINDOW = 5
GONE = 0.5
LAST = 10  # rollouts at the end over which H1 compares the habit rates
MARGIN = 0.1  # H1's equivalence margin (share of episodes), fixed in the spec before the runs


def timeline(run: RunInfo, start: int) -> pd.DataFrame:
    """Per rollout from ``start``: ``rollout``, ``habit`` (share of ending episodes that entered the
    waypoint), ``episodes``, and per kind of episode (``detour``, ``corridor``) the number of samples
    and their summed and mean self_reinforcement."""
    led = run.ledger
    if FLAG not in led.info_keys:
        raise ValueError(f"{run.path}: the ledger does not record {FLAG!r}; add it to record.info_keys")
    ep = led.sql(
        f"""SELECT rollout, avg(CASE WHEN "{FLAG}" > 0 THEN 1.0 ELSE 0.0 END) AS habit, count(*) AS episodes
            FROM episodes WHERE rollout >= {start} GROUP BY rollout ORDER BY rollout"""
    )
    sr = led.sql(
        f"""WITH kind AS (SELECT env, episode, "{FLAG}" > 0 AS detour FROM episodes)
            SELECT s.rollout, k.detour, count(*) AS n, sum(s.self_reinforcement) AS total
            FROM samples s JOIN transitions t USING (rollout, t, env)
                 JOIN kind k ON k.env = t.env AND k.episode = t.episode
            WHERE s.rollout >= {start} GROUP BY s.rollout, k.detour"""
    )
    led.close()
    out = ep.set_index("rollout")
    for name, flag in (("detour", True), ("corridor", False)):
        part = sr[sr.detour == flag].set_index("rollout")
        out[f"{name}_samples"] = part.n.reindex(out.index).fillna(0).astype(np.int64)
        out[f"{name}_total"] = part.total.reindex(out.index).fillna(0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_mean"] = out[f"{name}_total"] / out[f"{name}_samples"].where(
                out[f"{name}_samples"] > 0
            )
    return out.reset_index()


def persistence(tl: pd.DataFrame, start: int) -> float:
    """Rollouts after ``start`` until the trailing :data:`WINDOW`-rollout mean habit rate first falls to
    :data:`GONE` or below; NaN when it never does (censored)."""
    smooth = tl.habit.rolling(WINDOW, min_periods=1).mean()
    hit = tl.rollout[smooth <= GONE]
    return float(hit.iloc[0] - start) if len(hit) else np.nan


def per_seed(runs: list[RunInfo]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timelines: variant, seed and :func:`timeline`'s columns; summary: one row per seed with both
    runs: final habit rates, persistence, H2's per-seed difference)."""
    mine = {(r.variant, r.seed): r for r in runs if r.experiment == EXPERIMENT}
    lines, rows = [], []
    for seed in sorted({s for v, s in mine if v == HABIT}):
        habit, control = mine.get((HABIT, seed)), mine.get((CONTROL, seed))
        if habit is None or control is None:
            continue
        start = opening_rollouts(habit)
        tl_h, tl_c = timeline(habit, start), timeline(control, start)
        lines += [tl_h.assign(variant=HABIT, seed=seed), tl_c.assign(variant=CONTROL, seed=seed)]
        held = tl_h[(tl_h.habit >= GONE) & (tl_h.detour_samples > 0) & (tl_h.corridor_samples > 0)]
        h2 = float((held.corridor_mean - held.detour_mean).mean()) if len(held) else np.nan
        rows.append({
            "seed": seed, "opening_rollouts": start,
            "habit_at_opening_end": float(tl_h.habit.head(WINDOW).mean()),
            "final_habit": float(tl_h.habit.tail(LAST).mean()), "final_control": float(tl_c.habit.tail(LAST).mean()),
            "persistence": persistence(tl_h, start), "h2_rollouts": len(held), "h2_difference": h2,
        })  # fmt: skip
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(lines, ignore_index=True), pd.DataFrame(rows)


def tests(summary: pd.DataFrame) -> pd.DataFrame:
    """H1 (paired habit - control over the last rollouts: effect, or equivalence within the margin) and
    H2 (corridor - detour reinforcement per sample > 0), Holm over the three p-values."""
    d1 = (summary.final_habit - summary.final_control).to_numpy(dtype=np.float64)
    dec = stats.decide(d1, MARGIN, bounds=(-1.0, 1.0)) if d1.size else None
    d2 = summary.h2_difference.dropna().to_numpy(dtype=np.float64)
    p2 = stats.one_sided_p(d2) if d2.size >= 2 else np.nan
    iv2 = stats.interval(d2) if d2.size >= 2 else None
    p = [np.nan if dec is None else dec.p_effect, np.nan if dec is None else dec.p_equivalence, p2]
    holm = stats.holm(p)
    if dec is None or d1.size < stats.MIN_SEEDS:
        h1 = "too few seeds"
    elif holm[0] < stats.ALPHA:
        h1 = "holds (the habit persists)"
    elif not np.isnan(holm[1]) and holm[1] < stats.ALPHA:
        h1 = f"falsified (the habit did not persist: within ±{MARGIN} of the control)"
    else:
        h1 = "undecided"
    if d2.size < stats.MIN_SEEDS:
        h2 = f"too few seeds ({d2.size} with rollouts where the habit holds and both routes occur)"
    else:
        h2 = "holds" if holm[2] < stats.ALPHA else "falsified"
    return pd.DataFrame([
        {"test": "H1", "quantity": f"habit rate over the last {LAST} rollouts, habit run - control",
         "n": int(d1.size), "estimate": np.nan if dec is None else dec.interval.estimate,
         "low": np.nan if dec is None else dec.interval.low, "high": np.nan if dec is None else dec.interval.high,
         "p": p[0], "p_equivalence": p[1], "p_holm": holm[0], "p_equivalence_holm": holm[1], "outcome": h1},
        {"test": "H2", "quantity": "self_reinforcement per sample, corridor - detour episodes, while the habit holds",
         "n": int(d2.size), "estimate": np.nan if iv2 is None else iv2.estimate,
         "low": np.nan if iv2 is None else iv2.low, "high": np.nan if iv2 is None else iv2.high,
         "p": p2, "p_equivalence": np.nan, "p_holm": holm[2], "p_equivalence_holm": np.nan, "outcome": h2},
    ])  # fmt: skip


def plot(lines: pd.DataFrame, stem: Path) -> Path:
    fig, axes = new_figure(1, 2, width=4.6)
    for variant, colour in ((HABIT, "#D55E00"), (CONTROL, "#0072B2")):
        g = lines[lines.variant == variant].groupby("rollout")
        m = g.habit.mean()
        axes[0][0].plot(m.index, m, color=colour, label=f"{variant} (mean over seeds)")
        axes[0][0].fill_between(m.index, g.habit.min(), g.habit.max(), color=colour, alpha=0.15, linewidth=0)
    axes[0][0].axhline(GONE, color="black", linewidth=0.6, linestyle=":")
    axes[0][0].set_xlabel("rollout (after the opening)")
    axes[0][0].set_ylabel("share of episodes through the waypoint")
    axes[0][0].set_title("habit rate (band: min-max over seeds)")
    axes[0][0].legend(fontsize=7)
    h = lines[lines.variant == HABIT].groupby("rollout")
    for kind, colour in (("detour", "#D55E00"), ("corridor", "#009E73")):
        axes[0][1].plot(h[f"{kind}_mean"].mean().index, h[f"{kind}_mean"].mean(), color=colour, label=kind)
    axes[0][1].axhline(0, color="black", linewidth=0.6)
    axes[0][1].set_xlabel("rollout (after the opening)")
    axes[0][1].set_ylabel("self_reinforcement per sample (nats)")
    axes[0][1].set_title("habit run: reinforcement per route")
    axes[0][1].legend(fontsize=7)
    return save_figure(fig, stem)


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None) -> ClaimResult:
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult("habit", "Does a slightly worse reinforced habit persist?")
    lines, summary = per_seed(runs)
    if summary.empty:
        result.findings.append(
            f"The habit-persistence experiment ({EXPERIMENT}: experiments/{EXPERIMENT}.yaml) has no runs under this folder."
        )
        return result
    result.tables.append(save_csv(lines, out / "habit_timelines.csv"))
    result.tables.append(save_csv(summary, out / "habit_per_seed.csv"))
    found = tests(summary)
    result.tables.append(save_csv(found, out / "habit_tests.csv"))
    result.figures.append(plot(lines, out / "habit_persistence"))
    n = len(summary)
    opening = stats.interval(summary.habit_at_opening_end.to_numpy(), bounds=(0.0, 1.0))
    pers = summary.persistence.dropna().to_numpy(dtype=np.float64)
    pers_text = (
        f"{stats.interval(pers).format(1, sign=False)} rollouts (mean, 95% interval) on the {pers.size} "
        "seeds where it fell"
        if pers.size >= 2
        else f"measured on {pers.size} seeds"
    )
    result.findings.append(
        f"{EXPERIMENT}: {n} seeds. Habit rate over the first {WINDOW} rollouts after the opening "
        f"{opening.format(2, sign=False)}; persistence until it fell to {GONE}: {pers_text}; "
        f"{int(summary.persistence.isna().sum())} of {n} seeds never fell that far (censored)."
    )
    for row in found.itertuples():
        eq = f", p(within ±{MARGIN}) {row.p_equivalence:.2g}" if row.test == "H1" else ""
        result.findings.append(
            f"{row.test} ({row.quantity}): {row.estimate:+.4g} [{row.low:+.4g}, {row.high:+.4g}] over {row.n} "
            f"seeds, p {row.p:.2g}{eq} (Holm over H1-H2): {row.outcome}."
        )
    result.rules.append(
        f"{EXPERIMENT} (written in the spec before its runs): H1 habit rate over the last {LAST} rollouts, habit "
        f"run - control > 0 (one-sided t-test; within ±{MARGIN} by TOST: the habit did not persist); H2 "
        "self_reinforcement per sample of corridor episodes - detour episodes > 0 while the habit holds; Holm "
        f"over the three p-values; at least {stats.MIN_SEEDS} seeds."
    )
    return result
