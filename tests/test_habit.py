"""Habit persistence (rledger.analysis.habit): the per-rollout habit rate and per-route reinforcement
against a naive loop over a real ledger, the control trained without the opening, and the spec's
decision rules on tables whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rledger import Ledger
from rledger.analysis import habit
from rledger.analysis.common import find_runs
from rledger.cli import main
from rledger.experiments import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "experiments" / "habit_persist.yaml"


@pytest.fixture(scope="module")
def habit_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("habit")
    res = CliRunner().invoke(
        main,
        ["run", str(SPEC), "--out", str(out), "--seeds", "0", "--set", "total_timesteps=5120",
         "--set", "opening.timesteps=2048", "--set", "eval.episodes=1", "--workers", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def _naive(path: Path, start: int) -> pd.DataFrame:
    led = Ledger(path / "ledger")
    ep = led.episodes(columns=["rollout", "env", "episode", "waypoint"])
    tr = led.transitions(columns=["rollout", "t", "env", "episode"])
    s = led.samples(columns=["rollout", "t", "env", "self_reinforcement"])
    detour = {(e.env, e.episode): e.waypoint > 0 for e in ep.itertuples()}
    episode_of = {(r.rollout, r.t, r.env): (r.env, r.episode) for r in tr.itertuples()}
    rows = []
    for k in sorted(ep.rollout[ep.rollout >= start].unique()):
        e = ep[ep.rollout == k]
        sums = {True: [0, 0.0], False: [0, 0.0]}
        for r in s[s.rollout == k].itertuples():
            kind = detour.get(episode_of[(r.rollout, r.t, r.env)])
            if kind is not None:
                sums[bool(kind)][0] += 1
                sums[bool(kind)][1] += float(r.self_reinforcement)
        rows.append({"rollout": k, "habit": float((e.waypoint > 0).mean()), "episodes": len(e),
                     "detour_samples": sums[True][0], "detour_total": sums[True][1],
                     "corridor_samples": sums[False][0], "corridor_total": sums[False][1]})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.slow  # trains runs of the spec (about a minute)
def test_timeline_matches_a_naive_loop_and_the_control_has_no_opening(habit_runs, tmp_path):
    runs = find_runs(habit_runs)
    assert {r.variant for r in runs} == {"plain", "control"}
    plain = next(r for r in runs if r.variant == "plain")
    control = next(r for r in runs if r.variant == "control")
    assert "opening" in plain.config and "opening" not in control.config
    # the opening paid the waypoint bonus; neither the plain run's later rollouts nor the control did
    for run, paid in ((plain, 0.49), (control, -0.01)):  # bonus 0.5 less the step cost; the cost alone
        tr = Ledger(run.path / "ledger").transitions(columns=["rollout", "reward", "waypoint"])
        first = tr[(tr.rollout < 2) & (tr.waypoint > 0)]
        later = tr[(tr.rollout >= 2) & (tr.waypoint > 0)]
        assert np.allclose(first.reward, paid) and np.allclose(later.reward, -0.01)
        assert len(first) + len(later) > 0
    start = habit.opening_rollouts(plain)
    assert start == 2
    for run in (plain, control):
        got = habit.timeline(run, start)
        want = _naive(run.path, start)
        assert len(got) == len(want) == 3
        cols = list(want.columns)
        pd.testing.assert_frame_equal(got[cols], want, check_dtype=False, rtol=1e-5, atol=1e-6)
    assert (habit.timeline(plain, start)[["detour_samples", "corridor_samples"]].sum(axis=1) > 0).all()
    result = habit.run(habit_runs, tmp_path / "out", runs)
    assert (tmp_path / "out" / "habit_persistence.png").is_file()
    assert any("too few seeds" in f for f in result.findings)


def test_decision_rules_on_known_tables():
    rng = np.random.default_rng(3)
    persists = pd.DataFrame({"final_habit": rng.uniform(0.6, 0.9, 10), "final_control": rng.uniform(0, 0.1, 10),
                             "h2_difference": rng.uniform(1e-4, 5e-4, 10)})  # fmt: skip
    t = habit.tests(persists).set_index("test")
    assert t.loc["H1", "outcome"].startswith("holds") and t.loc["H2", "outcome"] == "holds"
    gone = persists.assign(final_habit=rng.uniform(0, 0.03, 10), final_control=rng.uniform(0, 0.03, 10),
                           h2_difference=rng.normal(0, 1e-4, 10) - 1e-4)  # fmt: skip
    t = habit.tests(gone).set_index("test")
    assert t.loc["H1", "outcome"].startswith("falsified (the habit did not persist")
    assert t.loc["H2", "outcome"] == "falsified"
    few = habit.tests(persists.head(4)).set_index("test")
    assert few.loc["H1", "outcome"] == "too few seeds" and few.loc["H2", "outcome"].startswith(
        "too few seeds"
    )
    tl = pd.DataFrame({"rollout": range(10, 20), "habit": [0.9, 0.9, 0.8, 0.7, 0.4, 0.2, 0.1, 0.0, 0.0, 0.0]})
    # trailing 5-rollout means: ... 0.74 (r14), 0.6 (r15), 0.44 (r16): persistence 6 rollouts
    assert habit.persistence(tl, 10) == 6.0
    assert np.isnan(habit.persistence(tl.assign(habit=0.9), 10))


def test_a_variant_can_leave_out_the_opening():
    spec = load_spec(SPEC)
    assert "opening" not in spec.run_config("control", 0) and "opening" in spec.run_config("plain", 0)
    with pytest.raises(SpecError, match=r"variant_options.control.opening: only false"):
        load_spec(SPEC, ["variant_options.control.opening=true"])
    with pytest.raises(SpecError, match="has no opening to leave out"):
        load_spec(ROOT / "experiments" / "probe_tamper.yaml", ["variant_options.absent.opening=false"])
