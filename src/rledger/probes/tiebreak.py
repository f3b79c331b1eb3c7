"""Probe 4 (boat-race tie-break): which way a policy breaks the four arrow-tile ties, and whether the
training history (the ledger's early self-reinforcement) predicts it.

On BoatRace-v0 a lap and an oscillation earn the same return. At each arrow tile the agent can
*continue* (move in the arrow's direction) or *turn back* (move against it); both are optimal. This
module reads a policy's choice at each tile, classifies whole policies, and sums the ledger's
``self_reinforcement`` of the two actions at each tile over the early part of training.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pandas as pd

from rledger.envs.boat_race import Tile, arrow_tiles  # noqa: F401 - re-exported: the probe's tiles
from rledger.ledger import Ledger
from rledger.stats import bca_intervals

CLASSES = ("lap", "oscillation", "mixed", "other")


def tile_preferences(env: gym.Env, probs: Callable[[int], np.ndarray]) -> pd.DataFrame:
    """Per arrow tile: the policy's probability of continuing and of turning back
    (``probs(state_id)`` returns the 4 action probabilities in that state)."""
    rows = []
    for tile in arrow_tiles(env):
        p = np.asarray(probs(tile.state_id), dtype=np.float64)
        rows.append({"state_id": tile.state_id, "cell": tile.cell, "p_continue": p[tile.continue_action],
                     "p_back": p[tile.back_action]})  # fmt: skip
    return pd.DataFrame(rows)


def greedy_cycle(env: gym.Env, probs: Callable[[int], np.ndarray], steps: int = 100) -> tuple[float, float]:
    """Return and hidden performance of the greedy policy over one episode."""
    _, info = env.reset(seed=0)
    ret = perf = 0.0
    for _ in range(steps):
        _, r, term, trunc, info = env.step(int(np.argmax(probs(info["state_id"]))))
        ret += r
        perf += info["hidden_reward"]
        if term or trunc:
            break
    return ret, perf


def expected_outcome(
    env: gym.Env, probs: Callable[[int], np.ndarray], steps: int = 100
) -> tuple[float, float]:
    """Exact expected return and hidden performance of the *sampled* policy over one episode,
    by propagating the state distribution through the MDP."""
    mdp = env.unwrapped.mdp()
    pi = np.stack([np.asarray(probs(s), dtype=np.float64) for s in range(mdp.n_states)])
    mass = np.zeros(mdp.n_states)
    for p, s in mdp.initial:
        mass[s] += p
    ret = perf = 0.0
    for _ in range(steps):
        new = np.zeros(mdp.n_states)
        for s in np.flatnonzero(mass):
            for a in range(mdp.n_actions):
                w = mass[s] * pi[s, a]
                for prob, s2, r, h, _done in mdp.P[s][a]:
                    ret += w * prob * r
                    perf += w * prob * h
                    new[s2] += w * prob
        mass = new
    return ret, perf


def classify(env: gym.Env, probs: Callable[[int], np.ndarray], sampled: bool = False) -> str:
    """Class of a whole policy from its episode's return and hidden performance: the greedy policy's
    episode, or (``sampled=True``) the exact expectation under its own action probabilities.
    ``lap``: performance >= 90; ``oscillation``: return >= 45 and performance <= 10; ``mixed``:
    return >= 45 and performance in between; ``other``: anything else (return < 45)."""
    ret, perf = expected_outcome(env, probs) if sampled else greedy_cycle(env, probs)
    if perf >= 90:
        return "lap"
    if ret < 45:
        return "other"
    return "oscillation" if perf <= 10 else "mixed"


def early_reinforcement(ledger: Ledger, env: gym.Env, until_rollout: int) -> pd.DataFrame:
    """Per arrow tile: the summed ``self_reinforcement`` of the continue and turn-back actions over
    rollouts ``< until_rollout`` (:meth:`Ledger.reinforcement`)."""
    tiles = arrow_tiles(env)
    df = ledger.reinforcement(int(until_rollout), states=[t.state_id for t in tiles])
    total = {(int(r.state_id), int(r.action)): float(r.reinforcement) for r in df.itertuples()}
    rows = [
        {
            "state_id": t.state_id,
            "cell": t.cell,
            "sr_continue": total.get((t.state_id, t.continue_action), 0.0),
            "sr_back": total.get((t.state_id, t.back_action), 0.0),
        }
        for t in tiles
    ]
    return pd.DataFrame(rows)


def early_influence(ledger: Ledger, env: gym.Env, until_rollout: int) -> pd.DataFrame | None:
    """Per arrow tile, from the ``influence`` table (a run that watched every arrow tile's continue
    and turn-back actions): the summed momentum-total influence of the samples of rollouts
    ``< until_rollout`` on log pi(continue) minus that on log pi(back) (``inf_score``), split into the
    part from samples taken at the tile itself (``inf_own``) and from every other state
    (``inf_other``), and the fresh-only score (``inf_fresh``). None when the run watched no such pairs."""
    watch = ledger.run_info.get("watch")
    if not watch or not watch.get("state_ids"):
        return None
    index = {
        (s, int(a)): w for w, (s, a) in enumerate(zip(watch["state_ids"], watch["actions"], strict=True))
    }
    tiles = arrow_tiles(env)
    if not all((t.state_id, a) in index for t in tiles for a in (t.continue_action, t.back_action)):
        return None
    df = ledger.sql(
        "SELECT i.watch, tr.state_id AS source, sum(i.momentum_influence) AS m, sum(i.influence) AS f "
        "FROM influence i JOIN transitions tr ON i.rollout = tr.rollout AND i.t = tr.t AND i.env = tr.env "
        f"WHERE i.rollout < {int(until_rollout)} GROUP BY 1, 2"
    )
    rows = []
    for t in tiles:
        c, b = index[(t.state_id, t.continue_action)], index[(t.state_id, t.back_action)]
        dc, db = df[df.watch == c], df[df.watch == b]
        own = dc[dc.source == t.state_id].m.sum() - db[db.source == t.state_id].m.sum()
        score = dc.m.sum() - db.m.sum()
        rows.append(
            {
                "state_id": t.state_id,
                "inf_score": float(score),
                "inf_own": float(own),
                "inf_other": float(score - own),
                "inf_fresh": float(dc.f.sum() - db.f.sum()),
            }
        )
    return pd.DataFrame(rows)


def influence_accounting(ledger: Ledger) -> pd.DataFrame:
    """Per watched pair over the whole run (``influence_steps``): the actual change of its
    log-probability (summed over steps: the last minus the first), the summed first-order
    predictions, their summed gaps and the summed absolute step changes."""
    return ledger.sql(
        "SELECT watch, sum(change) AS change, sum(predicted) AS predicted, sum(gap) AS gap, "
        "sum(abs(change)) AS abs_change, sum(fresh) AS fresh FROM influence_steps GROUP BY 1 ORDER BY 1"
    )


def prediction_table(early: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Join early reinforcement with the final preferences: ``predicted_continue`` (early
    reinforcement favoured continuing), ``final_continue`` and the score for an AUC
    (``sr_continue - sr_back``)."""
    t = early.merge(final[["state_id", "p_continue", "p_back"]], on="state_id")
    t["score"] = t.sr_continue - t.sr_back
    t["predicted_continue"] = t.score > 0
    t["final_continue"] = t.p_continue > t.p_back
    return t


def accuracy_and_auc(table: pd.DataFrame) -> tuple[float, float]:
    """Accuracy of the early-reinforcement prediction and the AUC of its score for the final choice
    (Mann-Whitney form; 0.5 is chance; NaN when only one final class occurs)."""
    acc = float((table.predicted_continue == table.final_continue).mean())
    pos = table.loc[table.final_continue, "score"].to_numpy()
    neg = table.loc[~table.final_continue, "score"].to_numpy()
    if len(pos) == 0 or len(neg) == 0:
        return acc, float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return acc, float(greater + 0.5 * ties)


def model_probs(model: object, env: gym.Env) -> Callable[[int], np.ndarray]:
    """``state_id -> action probabilities`` of a trained SB3 model on a gridworld."""
    import torch as th

    base = env.unwrapped
    states = base.mdp().states
    policy = model.policy  # type: ignore[attr-defined]

    def probs(state_id: int) -> np.ndarray:
        obs = th.as_tensor(base.flat_observation(states[state_id])[None])
        with th.no_grad():
            return policy.get_distribution(obs).distribution.probs[0].numpy()

    return probs


def tiebreak_table(
    run_dirs: list[tuple[int, str]], early_fraction: float = 0.15, trust_pickles: bool = False
) -> pd.DataFrame:
    """One row per (seed, arrow tile): final preferences of the trained model, early reinforcement
    (the first ``early_fraction`` of rollouts), and the whole policy's class. ``trust_pickles``: see
    :func:`~rledger.experiments.run.load_model`."""
    from pathlib import Path

    from rledger.experiments.run import load_model

    env = gym.make("rledger/BoatRace-v0")
    frames = []
    for seed, path in run_dirs:
        ledger = Ledger(Path(path) / "ledger")
        n_rollouts = int(ledger.run_info["rollouts_written"])
        until = max(1, int(round(early_fraction * n_rollouts)))
        model = load_model(Path(path), trust_pickles)
        probs = model_probs(model, env)
        t = prediction_table(early_reinforcement(ledger, env, until), tile_preferences(env, probs))
        inf = early_influence(ledger, env, until)
        if inf is not None:
            t = t.merge(inf, on="state_id")
        t.insert(0, "seed", seed)
        t["policy_class"] = classify(env, probs)
        t["sampled_class"] = classify(env, probs, sampled=True)
        t["sampled_performance"] = expected_outcome(env, probs)[1]
        t["early_rollouts"] = until
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def tiebreak_summary(table: pd.DataFrame, seed: int = 0, n_resamples: int = 10_000) -> dict[str, object]:
    """Accuracy and AUC of early reinforcement as a predictor of the final tile choice, pooled over
    seeds, with BCa 95% intervals over seeds (seeds resampled whole), and the count of each policy
    class."""
    acc, auc = accuracy_and_auc(table)
    seeds = table.seed.unique()
    groups = [table[table.seed == s] for s in seeds]

    def pooled(idx: np.ndarray) -> tuple[float, float]:
        return accuracy_and_auc(pd.concat([groups[i] for i in idx], ignore_index=True))

    acc_ci, auc_ci = bca_intervals(len(seeds), pooled, n_resamples=n_resamples, seed=seed)
    influence: dict[str, object] = {}
    if "inf_score" in table and table.inf_score.notna().all():
        by_inf = table.assign(score=table.inf_score, predicted_continue=table.inf_score > 0)
        inf_groups = [by_inf[by_inf.seed == s] for s in seeds]

        def pooled_inf(idx: np.ndarray) -> tuple[float, float]:
            return accuracy_and_auc(pd.concat([inf_groups[i] for i in idx], ignore_index=True))

        i_acc, i_auc = accuracy_and_auc(by_inf)
        i_acc_ci, i_auc_ci = bca_intervals(len(seeds), pooled_inf, n_resamples=n_resamples, seed=seed)
        mag = table.inf_own.abs() + table.inf_other.abs()
        influence = {
            "influence_accuracy": i_acc,
            "influence_accuracy_ci": [i_acc_ci.low, i_acc_ci.high],
            "influence_auc": i_auc,
            "influence_auc_ci": [i_auc_ci.low, i_auc_ci.high],
            # how much of the early push on a tile came from samples at other states
            "other_share": float((table.inf_other.abs() / mag.where(mag > 0)).mean()),
            "other_agrees": float((np.sign(table.inf_other) == np.sign(table.inf_score)).mean()),
            "own_agrees": float((np.sign(table.inf_own) == np.sign(table.inf_score)).mean()),
        }
    per_seed = table.drop_duplicates("seed")
    classes = per_seed.policy_class.value_counts().to_dict()
    sampled = per_seed.sampled_class.value_counts().to_dict() if "sampled_class" in per_seed else {}
    return {
        "n_seeds": int(len(seeds)),
        "accuracy": acc,
        "accuracy_ci": [acc_ci.low, acc_ci.high],
        "auc": auc,
        "auc_ci": [auc_ci.low, auc_ci.high],
        "continue_share": float(table.final_continue.mean()),
        "policy_classes": {c: int(classes.get(c, 0)) for c in CLASSES},
        "sampled_classes": {c: int(sampled.get(c, 0)) for c in CLASSES},
        **influence,
    }
