"""The goal-diversity dose-response analysis (rledger.analysis.dose): per-seed metrics against a
naive replay of the episodes, and the spec's three decision rules on tables whose answers are known."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from rledger.analysis import dose
from rledger.analysis.common import find_runs
from rledger.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dose_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dose")
    res = CliRunner().invoke(
        main,
        ["run", str(ROOT / "experiments" / "relocate_dose.yaml"), "--out", str(out), "--seeds", "0-1",
         "--set", "total_timesteps=1024", "--workers", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow  # trains runs of the spec (about a minute)
def test_per_seed_metrics_match_a_naive_replay(dose_runs, tmp_path):
    runs = find_runs(dose_runs)
    assert len(runs) == 12  # six shares x two seeds
    table = dose.evaluate(runs, episodes=6)
    ppo = table[table.policy == "ppo"]
    assert sorted(ppo.share.unique()) == [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
    assert set(table.policy) == {"ppo", "planner", "random"}
    # one run replayed by hand: sampled actions, episode i seeded seed * 10_000 + i, torch seeded alike
    import torch as th

    run = next(r for r in runs if r.variant == "share_005" and r.seed == 1)
    model = run.model()
    env = gym.make(run.env_id, goal_anywhere=1.0)
    reached, ended = [], []
    for i in range(6):
        th.manual_seed(10_000 + i)
        obs, info = env.reset(seed=10_000 + i)
        any_goal = False
        while True:
            obs, _, term, trunc, info = env.step(int(model.predict(obs, deterministic=False)[0]))
            any_goal = any_goal or bool(info["reached_goal"])
            if term or trunc:
                break
        reached.append(float(any_goal))
        ended.append(float(info["in_region"]))  # where the episode's last step left the agent
    got = ppo[(ppo.share == 0.05) & (ppo.seed == 1)].set_index("metric")["value"]
    assert got["any_reached_goal"] == pytest.approx(np.mean(reached))
    assert got["ended_in_region"] == pytest.approx(np.mean(ended))
    # the planner reaches the goal in every episode; the controls do not depend on the share
    planner = table[(table.policy == "planner") & (table.metric == "any_reached_goal")]
    assert (planner["value"] == 1.0).all() and planner.share.isna().all()
    result = dose.run(dose_runs, tmp_path / "out", runs)
    assert (tmp_path / "out" / "dose_response.png").is_file()
    assert any("too few seeds" in f for f in result.findings)  # two seeds: no decision


def _table(ended: dict[float, np.ndarray], reach: dict[float, np.ndarray]) -> pd.DataFrame:
    rows = []
    for metric, values in (("ended_in_region", ended), ("any_reached_goal", reach)):
        for share, v in values.items():
            rows += [{"policy": "ppo", "share": share, "seed": s, "metric": metric, "value": float(x)}
                     for s, x in enumerate(v)]  # fmt: skip
    return pd.DataFrame(rows)


def test_decision_rules_on_known_tables():
    rng = np.random.default_rng(0)
    shares = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
    # misgeneralization falls with the share and is gone by 0.05; reaching rises with it
    ended = {s: np.clip(rng.normal(0.8 if s < 0.05 else 0.1, 0.03, 10), 0, 1) for s in shares}
    reach = {s: np.clip(rng.normal(0.2 + 3 * s, 0.03, 10), 0, 1) for s in shares}
    t = dose.tests(_table(ended, reach)).set_index("test")
    assert list(t.outcome) == ["holds", "holds", "holds"]
    assert t.loc["P1", "estimate"] == pytest.approx(ended[0.0].mean() - ended[0.2].mean())
    # the opposite world: no effect of the share anywhere, and share 0.05 far from 0.2
    ended = {s: np.clip(rng.normal(0.5, 0.03, 10), 0, 1) for s in shares}
    ended[0.05] = np.clip(rng.normal(0.9, 0.03, 10), 0, 1)
    reach = {s: rng.uniform(0, 1, 10) for s in shares}
    t = dose.tests(_table(ended, reach)).set_index("test")
    assert t.loc["P1", "outcome"] == "falsified"
    assert t.loc["P2", "outcome"] == "falsified"  # the interval lies beyond +0.1
    assert t.loc["P3", "outcome"] == "not shown"
    few = dose.tests(_table({s: v[:5] for s, v in ended.items()}, {s: v[:5] for s, v in reach.items()}))
    assert set(few.outcome) == {"too few seeds"}
