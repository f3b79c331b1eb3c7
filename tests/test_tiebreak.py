"""Probe 4 machinery: tile preferences, the policy classifier on scripted policies, the ledger's early
reinforcement per tile against a pandas computation, and the AUC."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import rledger  # noqa: F401
from rledger.probes.tiebreak import (
    accuracy_and_auc,
    arrow_tiles,
    classify,
    early_reinforcement,
    expected_outcome,
    prediction_table,
    tile_preferences,
)

U, D, L, R = 0, 1, 2, 3


@pytest.fixture(scope="module")
def env():
    return gym.make("rledger/BoatRace-v0")


def scripted(env, table):
    """A deterministic policy from a cell -> action table (others: up)."""
    states = env.unwrapped.mdp().states

    def probs(state_id):
        p = np.zeros(4)
        p[table.get(states[state_id], U)] = 1.0
        return p

    return probs


LAP = {(1, 1): R, (1, 2): R, (1, 3): D, (2, 3): D, (3, 3): L, (3, 2): L, (3, 1): U, (2, 1): U}


def test_arrow_tiles(env):
    tiles = {t.cell: (t.continue_action, t.back_action) for t in arrow_tiles(env)}
    assert tiles == {(1, 2): (R, L), (2, 3): (D, U), (3, 2): (L, R), (2, 1): (U, D)}


def test_classifier_on_scripted_policies(env):
    assert classify(env, scripted(env, LAP)) == "lap"
    assert classify(env, scripted(env, LAP), sampled=True) == "lap"
    oscillate = dict(LAP)
    oscillate[(1, 2)] = L  # turn back at the first arrow: back and forth between (1,1) and (1,2)
    assert classify(env, scripted(env, oscillate)) == "oscillation"
    assert classify(env, lambda s: np.full(4, 0.25)) == "other"  # greedy: bumps into the top wall
    assert classify(env, lambda s: np.full(4, 0.25), sampled=True) == "other"
    # a coin flip between continuing and turning back at the first arrow: sampled, the policy mixes
    # laps and oscillation, at the full return either way
    lap_probs = scripted(env, LAP)
    first_arrow = next(t.state_id for t in arrow_tiles(env) if t.cell == (1, 2))

    def coin(state_id):
        if state_id == first_arrow:
            return np.array([0.0, 0.0, 0.5, 0.5])
        return lap_probs(state_id)

    assert classify(env, coin, sampled=True) == "mixed"
    ret, perf = expected_outcome(env, coin)
    assert ret == pytest.approx(50.0) and 10 < perf < 90
    stuck = {cell: U for cell in LAP}  # bumps into walls
    stuck[(1, 1)] = L
    assert classify(env, scripted(env, stuck)) == "other"
    prefs = tile_preferences(env, scripted(env, LAP))
    assert (prefs.p_continue == 1).all() and (prefs.p_back == 0).all()


def test_expected_outcome_matches_sampling(env):
    """The exact expectation against the mean of sampled episodes."""
    lap_probs = scripted(env, LAP)

    def noisy(state_id):
        return 0.8 * lap_probs(state_id) + 0.05

    exact_ret, exact_perf = expected_outcome(env, noisy)
    rng = np.random.default_rng(0)
    rets, perfs = [], []
    for i in range(400):
        _, info = env.reset(seed=i)
        ret = perf = 0.0
        for _ in range(100):
            _, r, _, _, info = env.step(int(rng.choice(4, p=noisy(info["state_id"]))))
            ret += r
            perf += info["hidden_reward"]
        rets.append(ret)
        perfs.append(perf)
    assert abs(np.mean(rets) - exact_ret) < 4 * np.std(rets) / 20
    assert abs(np.mean(perfs) - exact_perf) < 4 * np.std(perfs) / 20


def test_early_reinforcement_matches_pandas(tmp_path, env):
    from rledger import InstrumentedPPO, Ledger

    model = InstrumentedPPO("MlpPolicy", "rledger/BoatRace-v0", n_steps=256, batch_size=64, n_epochs=2, seed=0,
                            ledger=tmp_path / "r")  # fmt: skip
    model.learn(1024)
    ledger = Ledger(tmp_path / "r")
    got = early_reinforcement(ledger, env, until_rollout=2)
    s = ledger.samples(columns=["rollout", "t", "env", "self_reinforcement"])
    tr = ledger.transitions(columns=["rollout", "t", "env", "state_id", "action"])
    j = s.merge(tr, on=["rollout", "t", "env"])
    j = j[j.rollout < 2]
    j["a"] = j.action.map(lambda x: int(x[0]))
    for t, row in zip(arrow_tiles(env), got.itertuples(), strict=True):
        at = j[j.state_id == t.state_id]
        assert row.sr_continue == pytest.approx(
            at.loc[at.a == t.continue_action, "self_reinforcement"].sum(), rel=1e-5, abs=1e-12
        )
        assert row.sr_back == pytest.approx(
            at.loc[at.a == t.back_action, "self_reinforcement"].sum(), rel=1e-5, abs=1e-12
        )
    assert (got.sr_continue != 0).any()


def test_accuracy_and_auc():
    early = pd.DataFrame(
        {"state_id": [1, 2, 3, 4], "sr_continue": [2.0, 1.0, 0.0, 0.0], "sr_back": [0.0, 0.0, 1.0, 3.0]}
    )
    final = pd.DataFrame(
        {"state_id": [1, 2, 3, 4], "p_continue": [0.9, 0.8, 0.1, 0.6], "p_back": [0.1, 0.2, 0.9, 0.4]}
    )
    t = prediction_table(early, final)
    acc, auc = accuracy_and_auc(t)
    assert acc == 0.75  # tile 4 was reinforced toward turning back yet continues
    assert auc == pytest.approx(2 / 3)  # scores 2, 1, -3 (continue) vs -1 (back): 2 of 3 pairs ordered


def test_tiebreak_table_and_summary_end_to_end(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from rledger.cli import main
    from rledger.probes.tiebreak import CLASSES, tiebreak_summary, tiebreak_table

    spec = Path(__file__).parents[1] / "experiments" / "probe_tiebreak.yaml"
    out = tmp_path / "runs"
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--seeds", "0-1", "--workers", "2",
                                    "--set", "total_timesteps=4096", "--set", "eval.episodes=1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    runs = [(s, str(out / "probe_tiebreak" / "default" / f"seed={s}")) for s in (0, 1)]
    table = tiebreak_table(runs, early_fraction=0.5)
    assert len(table) == 8 and set(table.seed) == {0, 1}
    assert table.policy_class.isin(CLASSES).all()
    assert ((table.p_continue >= 0) & (table.p_continue + table.p_back <= 1 + 1e-6)).all()
    summary = tiebreak_summary(table, n_resamples=200)
    assert summary["n_seeds"] == 2 and 0 <= summary["accuracy"] <= 1
    assert summary["accuracy_ci"][0] <= summary["accuracy"] <= summary["accuracy_ci"][1]
    assert sum(summary["policy_classes"].values()) == 2


def test_early_influence_matches_pandas(tmp_path, env):
    from rledger import InstrumentedPPO, Ledger
    from rledger.experiments.run import watch_pairs
    from rledger.probes.tiebreak import early_influence, influence_accounting

    pairs = watch_pairs("rledger/BoatRace-v0", {}, "boat_race_arrows")
    tiles = arrow_tiles(env)
    assert pairs == [(t.state_id, a) for t in tiles for a in (t.continue_action, t.back_action)]
    model = InstrumentedPPO(
        "MlpPolicy", "rledger/BoatRace-v0", n_steps=256, batch_size=64, n_epochs=2, seed=0,
        ledger=tmp_path / "r", record=("transitions", "samples", "updates", "episodes", "momentum"),
        watch=pairs, momentum_horizon=10,
    )  # fmt: skip
    model.learn(1024)
    ledger = Ledger(tmp_path / "r")
    got = early_influence(ledger, env, until_rollout=2)
    inf = ledger.table("influence")
    tr = ledger.transitions(columns=["rollout", "t", "env", "state_id"])
    j = inf.merge(tr, on=["rollout", "t", "env"])
    j = j[j.rollout < 2]
    for k, (t, row) in enumerate(zip(tiles, got.itertuples(), strict=True)):
        c, b = j[j.watch == 2 * k], j[j.watch == 2 * k + 1]
        score = c.momentum_influence.sum() - b.momentum_influence.sum()
        own = (
            c.loc[c.state_id == t.state_id, "momentum_influence"].sum()
            - b.loc[b.state_id == t.state_id, "momentum_influence"].sum()
        )
        assert row.inf_score == pytest.approx(score, rel=1e-5, abs=1e-12)
        assert row.inf_own == pytest.approx(own, rel=1e-5, abs=1e-12)
        assert row.inf_other == pytest.approx(score - own, rel=1e-5, abs=1e-12)
        assert row.inf_fresh == pytest.approx(c.influence.sum() - b.influence.sum(), rel=1e-5, abs=1e-12)
    assert (got.inf_score != 0).all() and (got.inf_other != 0).any()
    acc = influence_accounting(ledger)
    steps = ledger.table("influence_steps")
    assert len(acc) == 8
    np.testing.assert_allclose(acc.change, steps.groupby("watch").change.sum().to_numpy(), rtol=1e-9)
    # without watched arrow tiles there is nothing to read
    plain = InstrumentedPPO("MlpPolicy", "rledger/BoatRace-v0", n_steps=256, seed=0, ledger=tmp_path / "p")
    plain.learn(256)
    assert early_influence(Ledger(tmp_path / "p"), env, 1) is None


@pytest.mark.slow
def test_tiebreak_influence_spec_end_to_end(tmp_path):
    """The influence re-recording trains the same policies as probe_tiebreak (recording does not change
    training), and the report's tie-break section reads it through the influence table."""
    from pathlib import Path

    from click.testing import CliRunner

    from rledger.analysis.common import find_runs
    from rledger.analysis.history import influence_finding
    from rledger.cli import main
    from rledger.probes.tiebreak import tiebreak_summary, tiebreak_table

    root = Path(__file__).parents[1] / "experiments"
    out = tmp_path / "runs"
    for name in ("probe_tiebreak", "tiebreak_influence"):
        res = CliRunner().invoke(main, ["run", str(root / f"{name}.yaml"), "--out", str(out), "--seeds", "0-1",
                                        "--workers", "2", "--set", "total_timesteps=4096",
                                        "--set", "eval.episodes=1"])  # fmt: skip
        assert res.exit_code == 0, res.output
    for s in (0, 1):
        a = np.load(out / "probe_tiebreak" / "default" / f"seed={s}" / "policy.npz")
        b = np.load(out / "tiebreak_influence" / "default" / f"seed={s}" / "policy.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    runs = [(s, str(out / "tiebreak_influence" / "default" / f"seed={s}")) for s in (0, 1)]
    table = tiebreak_table(runs, early_fraction=0.5)
    assert {"inf_score", "inf_own", "inf_other", "inf_fresh"} <= set(table.columns)
    summary = tiebreak_summary(table, n_resamples=200)
    assert 0 <= summary["influence_accuracy"] <= 1 and 0 <= summary["other_share"] <= 1
    group = [r for r in find_runs(out) if r.experiment == "tiebreak_influence"]
    text = influence_finding("tiebreak_influence", "default", summary, group)
    assert "of 16 (seed, pair) cases" in text
