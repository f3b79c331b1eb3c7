"""Claim 2: reinforcement maps. Where on the grid, and for which action, did PPO's updates raise or
lower the log-probability of the action taken: cumulative ``self_reinforcement`` per (cell, action),
early in training and over the whole run, beside the final policy's action probabilities.

``self_reinforcement`` is the first-order change of log pi(a|s) caused by a sample's own policy-loss
contribution to the Adam step (see docs/ledger.md); summed over a (state, action) it is the
reinforcement that pair received. States are mapped to the agent's cell with the environment's exact
state index, and summed over every state with the agent in that cell.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
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
from rledger.envs.base import MOVES
from rledger.ledger import Ledger
from rledger.probes.policies import policy_table

COLOURS = {"positive": "#0072B2", "negative": "#D55E00"}  # colour-blind safe (Okabe-Ito)


def make_env(run: RunInfo) -> gym.Env:
    return gym.make(run.env_id, **run.config["env"].get("kwargs", {}))


def state_cells(env: gym.Env) -> pd.DataFrame:
    """(state_id, row, col): the agent's cell in every reachable state of a gridworld."""
    base = env.unwrapped
    states = base.mdp().states
    cells = np.array([base.agent_cell(s) for s in states], dtype=np.int64).reshape(-1, 2)
    return pd.DataFrame({"state_id": np.arange(len(states)), "row": cells[:, 0], "col": cells[:, 1]})


def reinforcement_by_state(ledger: Ledger, until_rollout: int | None = None) -> pd.DataFrame:
    """(state_id, action, reinforcement, n): summed ``self_reinforcement`` and sample count per
    (state, action) over rollouts ``< until_rollout`` (all when None): :meth:`Ledger.reinforcement`."""
    return ledger.reinforcement(until_rollout).drop(columns="before")


def by_cell(per_state: pd.DataFrame, cells: pd.DataFrame, value: str) -> pd.DataFrame:
    """Sum ``value`` per (row, col, action) over the states with the agent in that cell."""
    merged = per_state.merge(cells, on="state_id")
    return merged.groupby(["row", "col", "action"], as_index=False)[value].sum()


def late_visits(ledger: Ledger, from_rollout: int) -> pd.DataFrame:
    """(state_id, visits): transitions per state in rollouts ``>= from_rollout``."""
    return ledger.sql(
        f"""SELECT state_id, COUNT(*) AS visits FROM transitions WHERE rollout >= {int(from_rollout)}
            GROUP BY state_id ORDER BY state_id"""
    )


def policy_by_cell(probs: np.ndarray, visits: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """(row, col, action, prob): the policy's action probabilities per cell, averaged over the states
    at that cell weighted by their late-training visits (cells not visited late are left out)."""
    v = visits.merge(cells, on="state_id")
    rows = []
    for (r, c), g in v.groupby(["row", "col"]):
        w = g.visits.to_numpy(dtype=np.float64)
        p = (probs[g.state_id.to_numpy()] * w[:, None]).sum(0) / w.sum()
        rows += [{"row": r, "col": c, "action": a, "prob": float(p[a])} for a in range(probs.shape[1])]
    return pd.DataFrame(rows, columns=["row", "col", "action", "prob"])


def plot_arrows(env: gym.Env, values: pd.DataFrame, value: str, ax: object = None, title: str = "") -> object:
    """The map (walls dark) with one arrow per (cell, action) from the cell's centre, its length
    proportional to sqrt(|value|) (largest = half a cell; the square root keeps small values visible
    beside large ones), blue for positive and vermilion for negative."""
    if ax is None:
        _, axes = new_figure()
        ax = axes[0, 0]
    base = env.unwrapped
    tiles = base.grid.tiles
    walls = (tiles == "#").astype(float)
    ax.imshow(walls, cmap="Greys", vmin=0, vmax=1.4, origin="upper")
    for (r, c), ch in np.ndenumerate(tiles):
        if ch not in ("#", " ", "."):
            ax.text(c, r, ch, ha="center", va="center", fontsize=7, color="0.55")
    scale = float(values[value].abs().max()) if len(values) else 0.0
    if scale > 0:
        for row in values.itertuples():
            v = getattr(row, value)
            if v == 0:
                continue
            dr, dc = MOVES[int(row.action)]
            length = 0.45 * np.sqrt(abs(v) / scale)
            colour = COLOURS["positive"] if v > 0 else COLOURS["negative"]
            ax.arrow(row.col, row.row, dc * length, dr * length, width=0.04, head_width=0.14,
                     head_length=min(0.12, length), length_includes_head=True, color=colour)  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return ax


def _windows(n: int, early_fraction: float, late_fraction: float) -> tuple[int, int]:
    """(early_until, late_from) of a run of ``n`` rollouts."""
    return max(1, int(round(early_fraction * n))), min(n - 1, int(round((1 - late_fraction) * n)))


def ledger_tables(
    runs: list[RunInfo], early_fraction: float = 0.2, late_fraction: float = 0.2
) -> dict[tuple[str, str, int], dict[str, pd.DataFrame]]:
    """What :func:`run_maps` reads from each run's ledger, for every run at once (two DuckDB queries
    over :class:`rledger.Ledgers`): per (experiment, variant, seed), ``early`` and ``total``
    reinforcement per (state_id, action) (``reinforcement``, ``n``) and ``visits`` per state late in
    training, with ``early_until``."""
    led = ledgers(runs)
    table = led.runs_table()
    wins = [_windows(int(n), early_fraction, late_fraction) for n in table.rollouts]
    cuts = table[["experiment", "variant", "seed"]].assign(
        early_until=[w[0] for w in wins], late_from=[w[1] for w in wins]
    )
    led.con.register("_cuts", cuts)
    keys = "experiment, variant, seed"
    sr = led.sql(
        f"""SELECT {keys}, state_id, CAST(action[1] AS INTEGER) AS action,
                   SUM(self_reinforcement) FILTER (WHERE rollout < early_until) AS early,
                   COUNT(*) FILTER (WHERE rollout < early_until) AS n_early,
                   SUM(self_reinforcement) AS total, COUNT(*) AS n_total
            FROM samples_x JOIN _cuts USING ({keys}) GROUP BY ALL ORDER BY {keys}, state_id, action"""
    )
    visits = led.sql(
        f"""SELECT {keys}, state_id, COUNT(*) AS visits FROM transitions JOIN _cuts USING ({keys})
            WHERE rollout >= late_from GROUP BY ALL ORDER BY {keys}, state_id"""
    )
    led.close()
    out: dict[tuple[str, str, int], dict[str, pd.DataFrame]] = {}
    for row in cuts.itertuples():
        key = (row.experiment, row.variant, int(row.seed))
        mine = sr[(sr.experiment == key[0]) & (sr.variant == key[1]) & (sr.seed == key[2])]
        early = mine[mine.n_early > 0]
        v = visits[(visits.experiment == key[0]) & (visits.variant == key[1]) & (visits.seed == key[2])]
        out[key] = {
            "early": pd.DataFrame({
                "state_id": early.state_id.to_numpy("int64"), "action": early.action.to_numpy("int64"),
                "reinforcement": early.early.to_numpy("float64"), "n": early.n_early.to_numpy("int64"),
            }),
            "total": pd.DataFrame({
                "state_id": mine.state_id.to_numpy("int64"), "action": mine.action.to_numpy("int64"),
                "reinforcement": mine.total.to_numpy("float64"), "n": mine.n_total.to_numpy("int64"),
            }),
            "visits": v[["state_id", "visits"]].reset_index(drop=True),
            "early_until": pd.DataFrame({"early_until": [int(row.early_until)]}),
        }  # fmt: skip
    return out


def maps_from(run: RunInfo, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """:func:`run_maps`'s tables from :func:`ledger_tables`'s part for ``run`` and its model."""
    env = make_env(run)
    cells = state_cells(env)
    early = by_cell(tables["early"], cells, "reinforcement")
    total = by_cell(tables["total"], cells, "reinforcement")
    policy = policy_by_cell(policy_table(run.model(), env), tables["visits"], cells)
    until = int(tables["early_until"].early_until.iloc[0])
    return {"early": early.assign(until_rollout=until), "total": total, "policy": policy}


def run_maps(
    run: RunInfo, early_fraction: float = 0.2, late_fraction: float = 0.2
) -> dict[str, pd.DataFrame]:
    """Tidy per-cell tables of one run: ``early`` and ``total`` reinforcement, ``policy`` probabilities."""
    env = make_env(run)
    cells = state_cells(env)
    ledger = run.ledger
    early_until, late_from = _windows(int(ledger.run_info["rollouts_written"]), early_fraction, late_fraction)
    early = by_cell(reinforcement_by_state(ledger, early_until), cells, "reinforcement")
    total = by_cell(reinforcement_by_state(ledger), cells, "reinforcement")
    policy = policy_by_cell(policy_table(run.model(), env), late_visits(ledger, late_from), cells)
    ledger.close()
    return {"early": early.assign(until_rollout=early_until), "total": total, "policy": policy}


def run(root: str | Path, out: str | Path, runs: list[RunInfo] | None = None) -> ClaimResult:
    """One map figure per gridworld (experiment, variant), drawn for its first seed; CSVs for all seeds."""
    out = Path(out)
    runs = find_runs(root) if runs is None else runs
    result = ClaimResult("reinforcement_maps", "Reinforcement maps")
    frames = []
    grid = [r for r in runs if r.is_gridworld]
    tables = ledger_tables(grid) if grid else {}
    for (exp, variant), group in group_runs(grid).items():
        for i, r in enumerate(group):
            maps = maps_from(r, tables[(r.experiment, r.variant, r.seed)])
            key = {"experiment": exp, "variant": variant, "seed": r.seed}
            for kind in ("early", "total"):
                frames.append(maps[kind].rename(columns={"reinforcement": "value"}).assign(kind=kind, **key))
            frames.append(maps["policy"].rename(columns={"prob": "value"}).assign(kind="policy", **key))
            if i == 0:
                env = make_env(r)
                fig, axes = new_figure(1, 3, width=3.6, height=3.6)
                until = int(maps["early"].until_rollout.iloc[0]) if len(maps["early"]) else 0
                plot_arrows(
                    env, maps["early"], "reinforcement", axes[0, 0], f"reinforcement, rollouts < {until}"
                )
                plot_arrows(env, maps["total"], "reinforcement", axes[0, 1], "reinforcement, whole run")
                plot_arrows(env, maps["policy"], "prob", axes[0, 2], "final policy (late visits)")
                fig.suptitle(f"{exp} / {variant}, seed {r.seed}")
                result.figures.append(save_figure(fig, out / f"maps_{exp}_{variant}"))
    if not frames:
        result.findings.append("No gridworld runs were found; reinforcement maps need rledger's gridworlds.")
        return result
    table = pd.concat(frames, ignore_index=True)
    table = table[["experiment", "variant", "seed", "kind", "row", "col", "action", "value"]]
    result.tables.append(save_csv(table, out / "maps_cells.csv"))
    result.findings.append(
        f"Maps of {table.groupby(['experiment', 'variant']).ngroups} experiment variants "
        f"({table.drop_duplicates(['experiment', 'variant', 'seed']).shape[0]} runs) in maps_cells.csv."
    )
    return result
