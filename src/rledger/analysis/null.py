"""The advantage-permutation null's three tests, as ``experiments/null_permuted.yaml`` states them
(written before its runs): per seed, the run trained with PPO as it is (``real``) against the run
trained with each rollout's advantages permuted across its samples (``permuted``, same seed, same
minibatches).

- P1: evaluation return, real - permuted > 0 (the permutation cuts what reward does);
- P2: R^2 of ln(pg_grad_norm) on ln|advantage_used| (mean over the learning-rate analysis's phases),
  real - permuted within +-0.1 (update size follows |advantage| by PPO's arithmetic);
- P3: in ``permuted``, the whole-run most-reinforced action's agreement with the final policy
  (the history analysis at cut 1.0) - chance > 0 (behaviour follows reinforcement without reward).

Each with :func:`rledger.stats.decide`, Holm's adjustment over the three p-values that decide them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rledger import stats
from rledger.analysis import history, learning_rate
from rledger.analysis.common import ClaimResult, RunInfo, find_runs, ledgers, save_csv
from rledger.experiments.run import read_done

EXPERIMENT = "null_permuted"
R2_MARGIN = 0.1
TERM = "log |advantage|"


def per_seed(runs: list[RunInfo]) -> pd.DataFrame:
    """(seed, variant, eval_return, r2, history_accuracy, chance) of every complete run of the
    experiment."""
    mine = [r for r in runs if r.experiment == EXPERIMENT and r.variant in ("real", "permuted")]
    if not mine:
        return pd.DataFrame(columns=["seed", "variant", "eval_return", "r2", "history_accuracy", "chance"])
    led = ledgers(mine)
    shares = learning_rate.variance_shares_all(led)
    led.close()
    sel = shares[(shares["update"] == "pg_grad_norm") & (shares.term == TERM)]
    r2 = sel.groupby(["variant", "seed"]).r2.mean()
    rows = []
    for r in mine:
        acc = history.run_accuracy(r)
        last = acc[acc.cut == acc.cut.max()].set_index("predictor").accuracy
        rows.append({
            "seed": r.seed, "variant": r.variant,
            "eval_return": float(read_done(r.path)["eval"][r.variant]["return"]),
            "r2": float(r2.get((r.variant, r.seed), np.nan)),
            "history_accuracy": float(last["reinforcement"]), "chance": float(last["chance"]),
        })  # fmt: skip
    return pd.DataFrame(rows).sort_values(["variant", "seed"]).reset_index(drop=True)


def tests(table: pd.DataFrame) -> pd.DataFrame:
    """The three pre-registered tests over the seeds that have both variants."""
    real = table[table.variant == "real"].set_index("seed")
    perm = table[table.variant == "permuted"].set_index("seed")
    seeds = sorted(set(real.index) & set(perm.index))
    specs = [
        ("P1", "eval return, real - permuted", real.eval_return - perm.eval_return, None, "effect"),
        ("P2", "R^2 of ln update on ln|A|, real - permuted", real.r2 - perm.r2, R2_MARGIN, "no effect"),
        ("P3", "permuted: history accuracy - chance", perm.history_accuracy - perm.chance, None, "effect"),
    ]
    rows = []
    for name, what, d, margin, predicted in specs:
        x = d.loc[seeds].to_numpy(dtype=np.float64)
        dec = stats.decide(x, margin) if len(x) else None
        rows.append({
            "test": name, "quantity": what, "predicted": predicted, "n_seeds": len(x),
            "difference": np.nan if dec is None else dec.interval.estimate,
            "low": np.nan if dec is None else dec.interval.low,
            "high": np.nan if dec is None else dec.interval.high,
            "p": np.nan if dec is None else (dec.p_equivalence if margin is not None else dec.p_effect),
        })  # fmt: skip
    out = pd.DataFrame(rows)
    ok = out.p.notna()
    out["p_holm"] = np.nan
    if ok.any():
        out.loc[ok, "p_holm"] = stats.holm(out.loc[ok, "p"].to_numpy())
    out["outcome"] = [
        "too few seeds" if n < stats.MIN_SEEDS else (pred if p < stats.ALPHA else "inconclusive")
        for n, pred, p in zip(out.n_seeds, out.predicted, out.p_holm.fillna(1.0), strict=True)
    ]
    out["holds"] = out.outcome == out.predicted
    return out


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None) -> ClaimResult:
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult("null", "The advantage-permutation null")
    table = per_seed(runs)
    if table.empty:
        result.findings.append(
            f"The advantage-permutation null ({EXPERIMENT}: experiments/{EXPERIMENT}.yaml) has no runs under this folder."
        )
        return result
    result.tables.append(save_csv(table, out / "null_per_seed.csv"))
    found = tests(table)
    result.tables.append(save_csv(found, out / "null_tests.csv"))
    means = table.groupby("variant")[["eval_return", "r2", "history_accuracy"]].mean()
    for v in ("real", "permuted"):
        if v in means.index:
            m = means.loc[v]
            result.findings.append(
                f"{v} ({int((table.variant == v).sum())} seeds): evaluation return {m.eval_return:.2f}, R² of "
                f"ln pg_grad_norm on ln|A| {m.r2:.2f}, most-reinforced action = final choice in "
                f"{m.history_accuracy:.0%} of late-visited states."
            )
    for row in found.itertuples():
        result.findings.append(
            f"{row.test} ({row.quantity}): {row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}] over "
            f"{row.n_seeds} seeds, Holm p {row.p_holm:.2g}: {row.outcome} (predicted {row.predicted}; "
            f"{'holds' if row.holds else 'does not hold'})."
        )
    result.rules.append(
        f"{EXPERIMENT}: P1 real - permuted evaluation return > 0; P2 R² difference within ±{R2_MARGIN}; "
        "P3 permuted history accuracy above chance; paired by seed, Holm over the three (written in the "
        "spec before the runs)."
    )
    return result
