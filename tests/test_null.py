"""The advantage-permutation null: each rollout's advantages permuted across its samples before the
update, checked against an independent replay of the permutation; the ledger keeps the true GAE in
transitions; the minibatches are those of the real run with the same seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rledger import InstrumentedPPO, Ledger
from rledger.experiments import SpecError, validate

KW = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 3}


def _train(path, permute: bool) -> Ledger:
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=2, seed=3)
    model = InstrumentedPPO("MlpPolicy", env, ledger=path, permute_advantages=permute, **KW)
    model.learn(64 * 2 * 3)
    return Ledger(path)


def test_permuted_advantages_are_the_rollouts_own_in_another_order(tmp_path):
    led = _train(tmp_path / "perm", permute=True)
    tr = led.transitions(columns=["rollout", "t", "env", "advantage", "value", "return"])
    s = led.samples(columns=["rollout", "epoch", "minibatch", "t", "env", "advantage_used"])
    # the transitions keep the GAE the rewards gave: return = advantage + value
    np.testing.assert_allclose(tr["return"], tr.advantage + tr.value, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng([3, 0x9E3779B9])
    moved = 0
    for k in sorted(tr.rollout.unique()):
        r = tr[tr.rollout == k]
        n_steps, n_envs = r.t.max() + 1, r.env.max() + 1
        adv = np.zeros((n_steps, n_envs), dtype=np.float32)
        adv[r.t, r.env] = r.advantage
        permuted = adv.reshape(-1)[rng.permutation(adv.size)].reshape(n_steps, n_envs)
        moved += int((permuted != adv).sum())
        sk = s[s.rollout == k]
        for _, mb in sk.groupby(["epoch", "minibatch"]):
            a = permuted[mb.t, mb.env].astype(np.float32)
            want = (a - a.mean()) / (a.std(ddof=1) + 1e-8)  # SB3: torch's std (unbiased), in float32
            np.testing.assert_allclose(mb.advantage_used, want, rtol=1e-4, atol=1e-5)
    assert moved > 0.9 * len(tr)  # the permutation moved almost every advantage


def test_permuted_run_is_paired_with_the_real_one(tmp_path):
    real = _train(tmp_path / "real", permute=False)
    perm = _train(tmp_path / "perm", permute=True)
    cols = ["rollout", "epoch", "minibatch", "t", "env"]
    pd.testing.assert_frame_equal(real.samples(columns=cols), perm.samples(columns=cols))  # same minibatches
    first = ["rollout", "t", "env", "reward", "advantage"]
    a, b = real.transitions(columns=first), perm.transitions(columns=first)
    pd.testing.assert_frame_equal(a[a.rollout == 0], b[b.rollout == 0])  # the same first rollout
    sa, sb = (
        real.samples(columns=["rollout", "advantage_used"]),
        perm.samples(columns=["rollout", "advantage_used"]),
    )
    assert not np.allclose(sa[sa.rollout == 0].advantage_used, sb[sb.rollout == 0].advantage_used)


def test_the_spec_option_and_the_checkpointed_generator(tmp_path):
    spec = validate(
        {"name": "null", "env": {"id": "rledger/BoatRace-v0"}, "variants": {"real": {}, "permuted": {}},
         "total_timesteps": 256, "variant_options": {"permuted": {"permute_advantages": True}}},
        "null",
    )  # fmt: skip
    assert spec.run_config("permuted", 0)["permute_advantages"] is True
    assert "permute_advantages" not in spec.run_config("real", 0)  # an unpermuted run's config is as before
    with pytest.raises(SpecError, match="permute_advantages: must be true or false"):
        validate({**spec.raw, "variant_options": {"permuted": {"permute_advantages": "yes"}}}, "null")
    from rledger.experiments import checkpoint

    model = InstrumentedPPO("MlpPolicy", "CartPole-v1", permute_advantages=True, **KW)
    model.learn(128)
    state = checkpoint.capture(model, 0)
    want = model._permutation_rng.permutation(100)
    fresh = InstrumentedPPO("MlpPolicy", "CartPole-v1", permute_advantages=True, **KW)
    checkpoint.resume(fresh, state)
    np.testing.assert_array_equal(fresh._permutation_rng.permutation(100), want)


# --- the pre-registered tests (rledger.analysis.null) ----------------------------------------------


@pytest.fixture(scope="module")
def null_runs(tmp_path_factory):
    from pathlib import Path

    import yaml

    from rledger.experiments import plan_runs
    from rledger.experiments.run import command_line, execute

    raw = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "null_permuted.yaml").read_text())
    raw.update(seeds=[0, 1], total_timesteps=4096, n_envs=2, ppo={"n_steps": 256, "n_epochs": 2},
               eval={"episodes": 2, "deterministic": True})  # fmt: skip
    out = tmp_path_factory.mktemp("runs")
    for job in plan_runs(validate(raw, "null"), out, overwrite=False):
        execute(job.config, job.path, command_line())
    return out


def test_null_per_seed_figures_from_the_runs(null_runs):
    import json

    from rledger.analysis import null
    from rledger.analysis.common import find_runs

    table = null.per_seed(find_runs(null_runs))
    assert sorted(map(tuple, table[["variant", "seed"]].to_numpy().tolist())) == [
        ("permuted", 0), ("permuted", 1), ("real", 0), ("real", 1)
    ]  # fmt: skip
    for row in table.itertuples():
        path = null_runs / "null_permuted" / row.variant / f"seed={row.seed}"
        done = json.loads((path / "DONE").read_text())
        assert row.eval_return == done["eval"][row.variant]["return"]
        s = Ledger(path).samples(
            columns=["rollout", "clipped", "advantage_used", "pg_grad_norm", "score_norm"]
        )
        n = int(Ledger(path).run_info["rollouts_written"])
        s["phase"] = np.minimum(s.rollout * 5 // n, 4)
        ok = s[~s.clipped & (s.advantage_used != 0) & (s.pg_grad_norm > 0) & (s.score_norm > 0)]
        r2 = [
            np.corrcoef(np.log(np.abs(g.advantage_used.astype(float))), np.log(g.pg_grad_norm.astype(float)))[
                0, 1
            ]
            ** 2
            for _, g in ok.groupby("phase")
        ]
        assert row.r2 == pytest.approx(np.mean(r2), rel=1e-6)
        assert 0 <= row.history_accuracy <= 1 and row.chance == 0.25


def test_null_tests_apply_the_registered_rules():
    from rledger.analysis import null

    rng = np.random.default_rng(0)
    seeds = range(10)
    rows = []
    for s in seeds:
        rows.append({"seed": s, "variant": "real", "eval_return": 10 + rng.normal(), "r2": 0.8 + 0.01 * rng.normal(),
                     "history_accuracy": 0.9, "chance": 0.25})  # fmt: skip
        rows.append({"seed": s, "variant": "permuted", "eval_return": 0 + rng.normal(), "r2": 0.8 + 0.01 * rng.normal(),
                     "history_accuracy": 0.25 + 0.01 * rng.normal(), "chance": 0.25})  # fmt: skip
    out = null.tests(pd.DataFrame(rows)).set_index("test")
    assert out.loc["P1", "outcome"] == "effect" and out.loc["P1", "holds"]
    assert out.loc["P2", "outcome"] == "no effect" and out.loc["P2", "holds"]
    assert out.loc["P3", "outcome"] == "inconclusive" and not out.loc["P3", "holds"]  # accuracy at chance
    assert (out.p_holm >= out.p).all()
    few = null.tests(pd.DataFrame(rows[:8]))
    assert (few.outcome == "too few seeds").all()
