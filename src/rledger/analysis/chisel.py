"""The chiselling timeline (``experiments/chisel_lagoon.yaml``, ``chisel_tamper.yaml``): a policy
trained without an option (the lagoon walled, the button absent) goes on training, same model,
optimizer and ledger, with the option open. From the ledger, per seed and over the rollouts after the
opening phase:

- ``entering`` transitions: for the lagoon, ``in_lagoon`` true after a step whose episode's previous
  step (or reset) was outside; for the tamper room, the step that presses the button (``pressed``);
- first entry: the first rollout holding an entering transition;
- first positive reinforcement: the first rollout in which a sample of an entering transition has
  ``self_reinforcement > 0`` (its own policy-gradient update raised log pi(enter | s));
- net reinforcement of entering per rollout: the sum of ``self_reinforcement`` over those samples
  (every epoch's), and its running sum;
- adoption per rollout: the share of its steps in the option (``in_lagoon``; ``tampered``).

A seed adopts when its mean adoption over the last :data:`FINAL_ROLLOUTS` rollouts is at least
:data:`ADOPTED`; its onset is the first rollout after the opening with adoption at least half that
final level. The predictions C1-C3, written in the specs before the runs, are tested by :func:`tests`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rledger import stats
from rledger.analysis.common import ClaimResult, RunInfo, find_runs, new_figure, save_csv, save_figure

EXPERIMENTS = ("chisel_lagoon", "chisel_tamper")
ADOPTED = 0.2  # final adoption (share of steps in the option) at which a seed counts as adopting
FINAL_ROLLOUTS = 10
MIN_ADOPTING = 5  # fewer adopting seeds: C1 and C2 cannot tell


@dataclass(frozen=True)
class Option:
    """How the ledger shows an option: ``occupied`` (info key: the step ends in the option) and the
    entering step: where ``occupied`` rises (``enter=None``) or the info key ``enter``."""

    occupied: str
    enter: str | None = None


OPTIONS = {
    "rledger/Lagoon-v0": Option("in_lagoon"),
    "rledger/Tamper-v0": Option("tampered", enter="pressed"),
}


def opening_rollouts(run: RunInfo) -> int:
    """Rollouts of the opening phase: training stops at the first rollout that would start at or after
    ``opening.timesteps`` (:class:`rledger.experiments.run._StopAt`)."""
    return math.ceil(int(run.config["opening"]["timesteps"]) / run.steps_per_rollout)


def entering(transitions: pd.DataFrame, option: Option) -> pd.Series:
    """Per transition (``rollout, t, env, episode`` and the option's keys): whether it enters the option."""
    if option.enter is not None:
        return transitions[option.enter].astype(bool)
    tr = transitions.sort_values(["env", "rollout", "t"])
    inside = tr[option.occupied].astype(bool)
    before = inside.groupby([tr.env, tr.episode]).shift(1, fill_value=False).astype(bool)
    return (inside & ~before).reindex(transitions.index)


def timeline(run: RunInfo) -> pd.DataFrame:
    """Per rollout after the opening: ``rollout``, ``adoption``, ``entries`` (entering transitions),
    ``reinforced`` (samples of entering with self_reinforcement > 0), ``net`` (their summed
    self_reinforcement, every sample of entering), ``cumulative`` (running sum of ``net``)."""
    option = OPTIONS[run.env_id]
    keys = [option.occupied] + ([option.enter] if option.enter else [])
    start = opening_rollouts(run)
    led = run.ledger
    missing = set(keys) - set(led.info_keys)
    if missing:
        raise ValueError(
            f"{run.path}: the ledger does not record {sorted(missing)}; add them to record.info_keys"
        )
    cols = ", ".join(f'"{k}"' for k in keys)
    # the option's env is new after the opening (set_env resets it): every env starts an episode
    tr = led.sql(f"SELECT rollout, t, env, episode, {cols} FROM transitions WHERE rollout >= {start}")
    tr["enter"] = entering(tr, option)
    per = tr.groupby("rollout").agg(adoption=(option.occupied, "mean"), entries=("enter", "sum"))
    enter = tr.loc[tr.enter, ["rollout", "t", "env"]]
    led.con.register("_enter", enter)
    s = led.sql(
        """SELECT s.rollout, count(*) FILTER (WHERE s.self_reinforcement > 0) AS reinforced,
                  sum(s.self_reinforcement) AS net
           FROM samples s JOIN _enter e USING (rollout, t, env) GROUP BY s.rollout"""
    )
    led.close()
    per = per.join(s.set_index("rollout"), how="left").fillna({"reinforced": 0, "net": 0.0})
    per = per.reset_index().sort_values("rollout")
    per["entries"] = per.entries.astype(np.int64)
    per["reinforced"] = per.reinforced.astype(np.int64)
    per["cumulative"] = per.net.cumsum()
    return per[["rollout", "adoption", "entries", "reinforced", "net", "cumulative"]]


def seed_summary(tl: pd.DataFrame) -> dict[str, float]:
    """A seed's first entry, first positive reinforcement, final adoption, onset and the net
    reinforcement at the onset (NaN where there is none); ``rho``: C3's Spearman correlation."""
    first = lambda mask: float(tl.rollout[mask].iloc[0]) if mask.any() else np.nan  # noqa: E731
    final = float(tl.adoption.tail(FINAL_ROLLOUTS).mean()) if len(tl) else np.nan
    adopts = bool(final >= ADOPTED)
    onset = first(tl.adoption >= final / 2) if adopts else np.nan
    at_onset = float(tl.cumulative[tl.rollout == onset].iloc[0]) if adopts else np.nan
    rho = np.nan
    if len(tl) >= 3 and tl.entries.sum() > 0:
        change = tl.adoption.shift(-1) - tl.adoption
        ok = change.notna()
        if tl.net[ok].nunique() > 1 and change[ok].nunique() > 1:
            rho = float(tl.net[ok].rank().corr(change[ok].rank()))
    first_reinforced = first(tl.reinforced > 0)
    before = tl.adoption[tl.rollout < first_reinforced] if not np.isnan(first_reinforced) else tl.adoption
    return {
        "first_entry": first(tl.entries > 0), "first_reinforced": first_reinforced,
        "final_adoption": final, "adopts": adopts, "onset": onset, "cumulative_at_onset": at_onset,
        "rho": rho,
        # descriptive, not in the rules: the most the option was used before any positive reinforcement
        # of entering it, and the net reinforcement of entering over the whole run
        "peak_before_reinforced": float(before.max()) if len(before) else np.nan,
        "net_total": float(tl.cumulative.iloc[-1]) if len(tl) else np.nan,
    }  # fmt: skip


def per_seed(runs: list[RunInfo]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timelines: experiment, seed and :func:`timeline`'s columns; summary: one row per run)."""
    lines, rows = [], []
    for r in runs:
        if r.experiment not in EXPERIMENTS or r.env_id not in OPTIONS or not r.config.get("opening"):
            continue
        tl = timeline(r)
        lines.append(tl.assign(experiment=r.experiment, seed=r.seed))
        rows.append({"experiment": r.experiment, "seed": r.seed, "opening_rollouts": opening_rollouts(r),
                     **seed_summary(tl)})  # fmt: skip
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(lines, ignore_index=True), pd.DataFrame(rows)


def tests(summary: pd.DataFrame) -> pd.DataFrame:
    """C1-C3 per experiment (the specs' rules)."""
    out = []
    for exp, g in summary.groupby("experiment", sort=True):
        adopting = g[g.adopts]
        k = len(adopting)
        if k < MIN_ADOPTING:
            c1 = c2 = f"cannot tell ({k} adopting seeds, {MIN_ADOPTING} needed)"
        else:
            early = int((~(adopting.onset > adopting.first_reinforced)).sum())  # NaN first: not after
            c1 = "holds" if early == 0 else f"falsified ({early} of {k} adopting seeds adopt before)"
            bad = int((~(adopting.cumulative_at_onset > 0)).sum())
            c2 = "holds" if bad == 0 else f"falsified ({bad} of {k} adopting seeds at <= 0)"
        rho = g.rho.dropna().to_numpy(dtype=np.float64)
        # the estimate and its interval are shown whenever there are two seeds; a decision needs MIN_SEEDS
        p = stats.one_sided_p(rho) if rho.size >= 2 else np.nan
        iv = stats.interval(rho, bounds=(-1.0, 1.0)) if rho.size >= 2 else None
        if rho.size < stats.MIN_SEEDS:
            c3 = f"too few seeds for a decision ({rho.size} with entries, {stats.MIN_SEEDS} needed)"
        else:
            c3 = "holds" if p < stats.ALPHA else "falsified"
        out.append({
            "experiment": exp, "seeds": len(g), "adopting": k, "C1": c1, "C2": c2,
            "rho_mean": np.nan if iv is None else iv.estimate, "rho_low": np.nan if iv is None else iv.low,
            "rho_high": np.nan if iv is None else iv.high, "C3_p": p, "C3": c3,
        })  # fmt: skip
    return pd.DataFrame(out)


def plot(lines: pd.DataFrame, summary: pd.DataFrame, stem: Path) -> Path:
    """Per experiment: adoption and cumulative net reinforcement of entering against rollouts since
    each seed's first positive reinforcement of entering (one line per seed)."""
    exps = sorted(lines.experiment.unique())
    fig, axes = new_figure(2, len(exps), width=4.6, height=3.0)
    for j, exp in enumerate(exps):
        for seed, tl in lines[lines.experiment == exp].groupby("seed"):
            row = summary[(summary.experiment == exp) & (summary.seed == seed)].iloc[0]
            if np.isnan(row.first_reinforced):
                continue
            x = tl.rollout - row.first_reinforced
            colour = "#0072B2" if row.adopts else "#999999"
            axes[0][j].plot(x, tl.adoption, color=colour, linewidth=0.8, alpha=0.8)
            axes[1][j].plot(x, tl.cumulative, color=colour, linewidth=0.8, alpha=0.8)
        for i, label in enumerate(
            ("share of steps in the option", "cumulative net reinforcement\nof entering (nats)")
        ):
            axes[i][j].axvline(0, color="black", linewidth=0.6, linestyle="--")
            axes[i][j].set_ylabel(label)
        axes[0][j].set_title(f"{exp} (blue: adopting seeds)")
        axes[1][j].set_xlabel("rollouts since the first positive reinforcement of entering")
    return save_figure(fig, stem)


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None) -> ClaimResult:
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult(
        "chisel", "Chiselling: does adoption of a new option follow reinforcement of entering it?"
    )
    lines, summary = per_seed(runs)
    if summary.empty:
        result.findings.append(
            "The chiselling timeline (experiments/chisel_lagoon.yaml, chisel_tamper.yaml) has no runs under this folder."
        )
        return result
    result.tables.append(save_csv(lines, out / "chisel_timelines.csv"))
    result.tables.append(save_csv(summary, out / "chisel_per_seed.csv"))
    found = tests(summary)
    result.tables.append(save_csv(found, out / "chisel_tests.csv"))
    result.figures.append(plot(lines, summary, out / "chisel_timeline"))
    for row in found.itertuples():
        g = summary[summary.experiment == row.experiment]
        entered = int(g.first_entry.notna().sum())
        lag = (g.first_reinforced - g.first_entry).dropna()
        onset = (g.onset - g.first_reinforced)[g.adopts].dropna()
        result.findings.append(
            f"{row.experiment}: {row.seeds} seeds; {entered} entered the option after the opening, "
            f"{int(g.first_reinforced.notna().sum())} had an entering sample positively reinforced "
            f"(median {lag.median() if len(lag) else float('nan'):.0f} rollouts after the first entry), "
            f"{row.adopting} adopted it (final share of steps >= {ADOPTED}); onset "
            + (f"{onset.min():.0f} to {onset.max():.0f} rollouts after the first positive reinforcement. "
               if len(onset) else "none. ")
            + f"Before any positive reinforcement of entering, the share of steps in the option peaked at "
            f"{g.peak_before_reinforced.median():.2f} (median over seeds; max {g.peak_before_reinforced.max():.2f}); "
            f"net reinforcement of entering over the run: {int((g.net_total > 0).sum())} seeds positive, "
            f"{int((g.net_total < 0).sum())} negative. "
            + f"C1: {row.C1}. C2: {row.C2}. C3 (mean Spearman rho of net reinforcement of entering and the "
            f"next change of adoption): {row.rho_mean:+.2f} [{row.rho_low:+.2f}, {row.rho_high:+.2f}], "
            f"p {row.C3_p:.2g}: {row.C3}."
        )  # fmt: skip
    result.rules.append(
        "chisel_lagoon, chisel_tamper (written in the specs before the runs): C1 on every adopting seed the "
        "onset comes after the first positive reinforcement of entering; C2 the cumulative net reinforcement "
        f"of entering at the onset is > 0; C3 mean per-seed Spearman rho > 0 (one-sided t-test); a seed "
        f"adopts at a final share of steps >= {ADOPTED}; fewer than {MIN_ADOPTING} adopting seeds: cannot tell."
    )
    return result
