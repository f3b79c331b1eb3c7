"""The chiselling timeline: the continued run's ledger (one ledger across the opening and the opened
option, numbering continued, no duplicates) and rledger.analysis.chisel against a naive loop over the
same ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rledger import Ledger
from rledger.analysis import chisel
from rledger.analysis.common import find_runs
from rledger.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lagoon_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chisel")
    res = CliRunner().invoke(
        main,
        ["run", str(ROOT / "experiments" / "chisel_lagoon.yaml"), "--out", str(out), "--seeds", "0",
         "--set", "total_timesteps=8192", "--set", "opening.timesteps=3000", "--set", "eval.episodes=1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow  # trains a continued run (about 20 s)
def test_the_continued_run_appends_to_one_ledger(lagoon_run):
    led = Ledger(lagoon_run / "chisel_lagoon" / "open" / "seed=0" / "ledger")
    tr = led.transitions(columns=["rollout", "t", "env", "episode", "in_lagoon"])
    assert sorted(tr.rollout.unique()) == list(range(8))  # 3 opening rollouts (3,000 steps), then 5
    assert not tr.duplicated(["rollout", "t", "env"]).any()
    assert len(tr) == 8 * 1024
    assert tr[tr.rollout < 3].in_lagoon.eq(0).all()  # walled: never inside
    s = led.samples(columns=["rollout", "epoch", "minibatch", "t", "env"])
    assert not s.duplicated(["rollout", "epoch", "t", "env"]).any()
    assert sorted(s.rollout.unique()) == list(range(8))  # every rollout's samples (record.every 1)
    u = led.updates(columns=["rollout", "opt_step"])
    assert (np.diff(u.sort_values(["rollout"], kind="stable").opt_step.to_numpy()) == 1).all()
    # episode numbers per env never go back across the phase boundary
    for _, g in tr.sort_values(["env", "rollout", "t"]).groupby("env"):
        assert (np.diff(g.episode.to_numpy()) >= 0).all()


def _naive_timeline(path: Path, start: int) -> pd.DataFrame:
    """Row by row: entering = in_lagoon now and not on the episode's previous step; per rollout the
    adoption, the entering count, the samples of entering with self_reinforcement > 0 and their sum."""
    led = Ledger(path / "ledger")
    tr = led.transitions(columns=["rollout", "t", "env", "episode", "in_lagoon"])
    s = led.samples(columns=["rollout", "t", "env", "self_reinforcement"])
    tr = tr[tr.rollout >= start].sort_values(["env", "rollout", "t"])
    prev: dict[tuple[int, int], bool] = {}
    enters = set()
    for row in tr.itertuples():
        key = (row.env, row.episode)
        inside = bool(row.in_lagoon)
        if inside and not prev.get(key, False):
            enters.add((row.rollout, row.t, row.env))
        prev[key] = inside
    rows = []
    for k in sorted(tr.rollout.unique()):
        sk = s[s.rollout == k]
        mine = [sr for sr in sk.itertuples() if (sr.rollout, sr.t, sr.env) in enters]
        rows.append({
            "rollout": k, "adoption": tr[tr.rollout == k].in_lagoon.mean(),
            "entries": sum(1 for e in enters if e[0] == k),
            "reinforced": sum(1 for sr in mine if sr.self_reinforcement > 0),
            "net": sum(float(sr.self_reinforcement) for sr in mine),
        })  # fmt: skip
    out = pd.DataFrame(rows)
    out["cumulative"] = out.net.cumsum()
    return out


@pytest.mark.slow  # trains a continued run (about 20 s)
def test_timeline_matches_a_naive_loop(lagoon_run, tmp_path):
    (run,) = find_runs(lagoon_run)
    assert chisel.opening_rollouts(run) == 3
    got = chisel.timeline(run)
    want = _naive_timeline(run.path, 3)
    assert got.entries.sum() > 0  # the near-random policy enters the opened lagoon: the test is not empty
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False, rtol=1e-5, atol=1e-7)
    result = chisel.run(lagoon_run, tmp_path / "out", [run])
    assert (tmp_path / "out" / "chisel_timeline.png").is_file()
    assert any("cannot tell" in f for f in result.findings)  # one seed


def test_entering_rules_and_the_decisions():
    tr = pd.DataFrame({
        "rollout": [0] * 6, "t": [0, 1, 2, 3, 0, 1], "env": [0, 0, 0, 0, 1, 1], "episode": [0, 0, 1, 1, 0, 0],
        "in_lagoon": [1, 1, 1, 0, 0, 1], "pressed": [0, 1, 0, 0, 1, 0],
    })  # fmt: skip
    # an episode that starts inside is entered at its first step; staying inside is not entering again
    assert chisel.entering(tr, chisel.Option("in_lagoon")).tolist() == [True, False, True, False, False, True]
    assert chisel.entering(tr, chisel.Option("tampered", enter="pressed")).tolist() == [
        False, True, False, False, True, False,
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    base = {"experiment": "chisel_lagoon", "adopts": True, "first_entry": 1.0, "first_reinforced": 2.0}
    rows = [{**base, "seed": s, "onset": 5.0, "cumulative_at_onset": 0.3, "rho": rng.uniform(0.2, 0.5)}
            for s in range(10)]  # fmt: skip
    t = chisel.tests(pd.DataFrame(rows)).iloc[0]
    assert (t.C1, t.C2, t.C3) == ("holds", "holds", "holds")
    rows[0] = {**rows[0], "onset": 2.0}  # adopted in the rollout of its first positive reinforcement
    rows[1] = {**rows[1], "cumulative_at_onset": -0.1}
    rows = [{**r, "rho": rng.uniform(-0.5, 0.5)} for r in rows]
    t = chisel.tests(pd.DataFrame(rows)).iloc[0]
    assert t.C1.startswith("falsified (1 of 10") and t.C2.startswith("falsified (1 of 10")
    few = chisel.tests(pd.DataFrame([{**r, "adopts": i < 4} for i, r in enumerate(rows)])).iloc[0]
    assert few.C1.startswith("cannot tell (4 adopting")
