"""Claim 3: behaviour against reinforcement history. Does the reinforcement a (state, action) pair
received predict what the final policy does there?

Per run: for the states the final policy visits (transitions in the last 20% of rollouts, weighted by
visits), the action with the largest cumulative ``self_reinforcement`` up to a cut (10%, 25%, 50%,
100% of rollouts) is compared with the final policy's most probable action. Baselines: the action
sampled most often up to the same cut (frequency, which reinforcement could merely echo) and chance
(1 / number of actions). The boat-race tie-break (``rledger.probes.tiebreak``) is the sharpest case:
there the reward is indifferent and only history can decide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from rledger.analysis.gridmaps import late_visits, make_env
from rledger.ledger import Ledger
from rledger.probes.policies import policy_table

CUTS = (0.1, 0.25, 0.5, 1.0)


def cumulative_by_cut(ledger: Ledger, cuts: tuple[float, ...] = CUTS) -> pd.DataFrame:
    """(state_id, action, cut, reinforcement, n): cumulative ``self_reinforcement`` and sample counts
    per (state, action) over rollouts ``< round(cut * rollouts)`` (pairs sampled by then), one pass
    (:meth:`Ledger.reinforcement`)."""
    n = int(ledger.run_info["rollouts_written"])
    bounds = [max(1, int(round(c * n))) for c in cuts]
    long = ledger.reinforcement(bounds)
    frames = [
        long[long.before == b].drop(columns="before").assign(cut=c) for b, c in zip(bounds, cuts, strict=True)
    ]
    return pd.concat(frames, ignore_index=True)[["state_id", "action", "cut", "reinforcement", "n"]]


def prediction_accuracy(cumulative: pd.DataFrame, probs: np.ndarray, visits: pd.DataFrame) -> pd.DataFrame:
    """(cut, predictor, accuracy, states): visit-weighted share of visited states where the predictor's
    action equals the final policy's most probable one. Predictors: ``reinforcement`` (argmax of
    cumulative self_reinforcement; actions never sampled count 0), ``frequency`` (argmax of sample
    counts), ``chance``. Ties between actions count as the lowest index, as np.argmax does."""
    n_actions = probs.shape[1]
    weights = visits.set_index("state_id").visits
    states = weights.index.to_numpy()
    final = probs[states].argmax(1)
    w = weights.to_numpy(dtype=np.float64)
    rows = []
    for cut, g in cumulative.groupby("cut"):
        sr = np.zeros((len(probs), n_actions))
        cnt = np.zeros((len(probs), n_actions))
        sr[g.state_id.to_numpy(), g.action.to_numpy()] = g.reinforcement.to_numpy()
        cnt[g.state_id.to_numpy(), g.action.to_numpy()] = g.n.to_numpy()
        seen = cnt[states].sum(1) > 0
        ww = w * seen
        for name, pred in (("reinforcement", sr[states].argmax(1)), ("frequency", cnt[states].argmax(1))):
            rows.append({"cut": cut, "predictor": name, "accuracy": float((ww * (pred == final)).sum() / ww.sum()),
                         "states": int(seen.sum())})  # fmt: skip
        rows.append(
            {"cut": cut, "predictor": "chance", "accuracy": 1.0 / n_actions, "states": int(seen.sum())}
        )
    return pd.DataFrame(rows)


def run_accuracy(run: RunInfo, late_fraction: float = 0.2) -> pd.DataFrame:
    ledger = run.ledger
    n = int(ledger.run_info["rollouts_written"])
    visits = late_visits(ledger, min(n - 1, int(round((1 - late_fraction) * n))))
    probs = policy_table(run.model(), make_env(run))
    table = prediction_accuracy(cumulative_by_cut(ledger), probs, visits)
    ledger.close()
    return table


def plot_accuracy(table: pd.DataFrame, ax: object = None) -> object:
    import seaborn as sns

    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    sns.lineplot(data=table, x="cut", y="accuracy", hue="predictor", marker="o", ax=ax, palette="colorblind",
                 errorbar=("ci", 95), n_boot=1000, seed=0)  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("share of training whose reinforcement is counted")
    ax.set_ylabel("agreement with final policy")
    return ax


def tiebreak_windows(run: RunInfo) -> tuple[tuple[float, ...], float, bool]:
    """(windows, primary, named) of the tie-break analysis for ``run``'s experiment: as its saved
    spec.yaml names them (``tiebreak:``), else the single default window 0.15 (``named`` False)."""
    from rledger.experiments.spec import SpecError, _tiebreak, load_yaml

    spec_file = run.path.parents[1] / "spec.yaml"
    raw = load_yaml(spec_file.read_text()) if spec_file.is_file() else {}
    try:
        t = _tiebreak((raw or {}).get("tiebreak"))
    except SpecError as exc:
        raise ValueError(f"{spec_file}: {exc}") from None
    return (t.windows, t.primary, True) if t is not None else ((0.15,), 0.15, False)


def tiebreak_section(runs: list[RunInfo], out: Path, result: ClaimResult, n_resamples: int = 2000) -> None:
    """The boat-race tie-break per boat-race experiment: early reinforcement at each arrow tile
    against the final preference there, with accuracy, AUC (BCa intervals over seeds) and policy
    classes, for each early window the spec names; the primary window's figures lead, the others are
    labelled exploratory."""
    from rledger.probes.tiebreak import tiebreak_summary, tiebreak_table

    boat = [r for r in runs if r.env_id == "rledger/BoatRace-v0"]
    tables, summaries = [], []
    for (exp, variant), group in group_runs(boat).items():
        windows, primary, named = tiebreak_windows(group[0])
        for w in sorted(windows, key=lambda x: (x != primary, x)):
            t = tiebreak_table(
                [(r.seed, str(r.path)) for r in group], early_fraction=w, trust_pickles=group[0].trust_pickles
            )
            t.insert(0, "variant", variant)
            t.insert(0, "experiment", exp)
            t["window"] = w
            t["primary"] = w == primary
            s = tiebreak_summary(t, seed=0, n_resamples=n_resamples)
            summaries.append(
                {"experiment": exp, "variant": variant, "window": w, "primary": w == primary, **s}
            )
            acc, auc = s["accuracy_ci"], s["auc_ci"]
            label = (
                f"primary window, first {w:.0%} of rollouts"
                + ("" if named else " (no windows named in the spec)")
                if w == primary
                else f"exploratory window, first {w:.0%} of rollouts"
            )
            if w == primary:
                tables.append(t)
            result.findings.append(
                f"Tie-break, {exp}/{variant} ({s['n_seeds']} seeds; {label}): final policies continue around "
                f"the track at {s['continue_share']:.0%} of arrow tiles; early reinforcement predicts the tile "
                f"choice with accuracy {s['accuracy']:.2f} [{acc[0]:.2f}, {acc[1]:.2f}] and AUC {s['auc']:.2f} "
                f"[{auc[0]:.2f}, {auc[1]:.2f}] (chance 0.5; BCa 95% intervals over seeds)"
                + (
                    "; greedy policy classes "
                    + ", ".join(f"{k} {v}" for k, v in s["policy_classes"].items() if v)
                    if w == primary
                    else ""
                )
                + "."
            )
            if w == primary and "influence_accuracy" in s:
                result.findings.append(influence_finding(exp, variant, s, group))
    if not tables:
        return
    table = pd.concat(tables, ignore_index=True)
    opened = {(r.experiment, r.variant) for r in boat if r.config.get("opening")}
    # the intervention compares training histories under the same learning rule: runs of the
    # advantage-permutation null (the null section reads them) are not a history without an opening
    permuted = {(r.experiment, r.variant) for r in boat if r.config.get("permute_advantages")}
    # a run that watched pairs re-records a training another experiment may hold too (recording does
    # not change training): not a history of its own
    watched = {(r.experiment, r.variant) for r in boat if r.config.get("record", {}).get("watch")}
    result.findings += history_intervention(
        table[[k not in permuted | watched for k in zip(table.experiment, table.variant, strict=True)]],
        opened,
    )
    result.tables.append(save_csv(table.drop(columns=["cell"]), out / "history_tiebreak.csv"))
    flat = [{k: (v if not isinstance(v, (list, dict)) else str(v)) for k, v in s.items()} for s in summaries]
    result.tables.append(save_csv(pd.DataFrame(flat), out / "history_tiebreak_summary.csv"))
    fig, axes = new_figure(1, 2)
    ax = axes[0, 0]
    for i, ((exp, variant), g) in enumerate(table.groupby(["experiment", "variant"])):
        ax.scatter(np.sign(g.score) * np.log10(1 + np.abs(g.score) * 1e3), g.p_continue, s=14, alpha=0.7,
                   label=f"{exp}/{variant}", color=f"C{i}")  # fmt: skip
    ax.axvline(0, color="0.6", lw=0.8)
    ax.axhline(0.5, color="0.6", lw=0.8)
    ax.set_xlabel("early reinforcement, continue minus back (signed log10(1 + 1000|x|))")
    ax.set_ylabel("final P(continue) at the tile")
    ax.legend(fontsize=7)
    shares = table.groupby(["experiment", "variant", "seed"]).final_continue.mean().reset_index()
    import seaborn as sns

    shares["run"] = shares.experiment + "/" + shares.variant
    sns.barplot(data=shares, x="run", y="final_continue", ax=axes[0, 1], errorbar=("ci", 95), n_boot=1000,
                seed=0, palette="colorblind", hue="run", legend=False)  # fmt: skip
    axes[0, 1].set_ylabel("share of tiles: continue")
    axes[0, 1].set_xlabel("")
    axes[0, 1].tick_params(axis="x", labelrotation=15, labelsize=7)
    fig.suptitle("Boat-race tie-break: laps and oscillation pay the same")
    result.figures.append(save_figure(fig, out / "history_tiebreak"))


def influence_finding(exp: str, variant: str, s: dict[str, Any], group: list[RunInfo]) -> str:
    """The tie-break read through the influence table (runs that watched the arrow tiles): the early
    momentum-total push on continue against turn-back as the predictor, where it came from, and how
    well first order accounts for each watched log-probability's change over the run."""
    from rledger.probes.tiebreak import influence_accounting

    acc, auc = s["influence_accuracy_ci"], s["influence_auc_ci"]
    fits = []
    for r in group:
        a = influence_accounting(r.ledger)
        fits.append((a.gap.abs() <= 0.1 * a.abs_change).to_numpy())
    fit = np.concatenate(fits) if fits else np.zeros(0, dtype=bool)
    return (
        f"Tie-break through influence, {exp}/{variant} ({s['n_seeds']} seeds; primary window): the early "
        f"push of all samples on log pi(continue) against log pi(turn back) at each arrow tile (first-order "
        f"influence through Adam's momentum) predicts the final choice with accuracy "
        f"{s['influence_accuracy']:.2f} [{acc[0]:.2f}, {acc[1]:.2f}] and AUC {s['influence_auc']:.2f} "
        f"[{auc[0]:.2f}, {auc[1]:.2f}] (the same runs' self-reinforcement: accuracy {s['accuracy']:.2f}, AUC "
        f"{s['auc']:.2f}). On average {s['other_share']:.0%} of that push's magnitude came from samples at "
        f"other states; the other states' push had the net push's sign at {s['other_agrees']:.0%} of tiles, "
        f"the tile's own samples at {s['own_agrees']:.0%}. First order accounts for each watched "
        f"log-probability's change over the whole run within 10% of its summed step changes for "
        f"{fit.mean():.0%} of {fit.size} (seed, pair) cases."
    )


def history_intervention(table: pd.DataFrame, opened: set[tuple[str, str]]) -> list[str]:
    """The tie-break's second half: boat-race groups trained with an opening phase (``opened``, e.g.
    laps reinforced by a shaping bonus, then the identical original reward) against each group trained
    without one. Per seed: the share of arrow tiles where the final policy continues, and the expected
    hidden performance of the sampled policy; differences of independent groups of seeds with
    two-sample studentized-bootstrap intervals (:func:`rledger.stats.difference_interval`)."""
    from rledger.stats import difference_interval

    per_seed = table.groupby(["experiment", "variant", "seed"]).agg(
        continue_share=("final_continue", "mean"), performance=("sampled_performance", "first"),
        greedy_class=("policy_class", "first"),
    ).reset_index()  # fmt: skip
    lines = []
    groups = {k: g for k, g in per_seed.groupby(["experiment", "variant"])}
    for with_key in sorted(opened & set(groups)):
        for without_key in sorted(set(groups) - opened):
            a, b = groups[with_key], groups[without_key]
            dc = difference_interval(a.continue_share, b.continue_share)
            dp = difference_interval(a.performance, b.performance)
            lines.append(
                f"History intervention, {'/'.join(with_key)} (opening phase) vs {'/'.join(without_key)}: "
                f"continue share {a.continue_share.mean():.2f} vs {b.continue_share.mean():.2f}, difference "
                f"{dc.format(2)}; sampled hidden performance "
                f"{a.performance.mean():.1f} vs {b.performance.mean():.1f}, difference {dp.format(1)}; "
                f"greedy lap policies {(a.greedy_class == 'lap').sum()}/{len(a)} vs "
                f"{(b.greedy_class == 'lap').sum()}/{len(b)}. The reward after the opening is identical, and "
                "the planner is indifferent between laps and oscillation."
            )
    return lines


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None) -> ClaimResult:
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult("history", "Behaviour against reinforcement history")
    frames = []
    for (exp, variant), group in group_runs([r for r in runs if r.is_gridworld]).items():
        for r in group:
            frames.append(run_accuracy(r).assign(experiment=exp, variant=variant, seed=r.seed))
    if frames:
        table = pd.concat(frames, ignore_index=True)
        table = table[["experiment", "variant", "seed", "cut", "predictor", "accuracy", "states"]]
        result.tables.append(save_csv(table, out / "history_accuracy.csv"))
        groups = list(table.groupby(["experiment", "variant"]))
        fig, axes = new_figure(1, len(groups), width=3.6)
        for ax, ((exp, variant), g) in zip(axes[0], groups, strict=True):
            plot_accuracy(g, ax)
            ax.set_title(f"{exp}/{variant} ({g.seed.nunique()} seeds)", fontsize=9)
        result.figures.append(save_figure(fig, out / "history_accuracy"))
        for (exp, variant), g in groups:
            m = g[g.cut == g.cut.max()].groupby("predictor").accuracy.mean()
            e = g[g.cut == g.cut.min()].groupby("predictor").accuracy.mean()
            result.findings.append(
                f"{exp}/{variant}: the most-reinforced action is the final policy's choice in "
                f"{e['reinforcement']:.0%} of visited states after {g.cut.min():.0%} of training and "
                f"{m['reinforcement']:.0%} after all of it (most-sampled action: {e['frequency']:.0%} / "
                f"{m['frequency']:.0%}; chance {m['chance']:.0%})."
            )
    else:
        result.findings.append("No gridworld runs were found.")
    tiebreak_section(runs, out, result)
    return result
