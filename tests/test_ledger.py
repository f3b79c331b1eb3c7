"""Ledger identities, round trip, completeness, determinism and refusals."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from rledger import InstrumentedPPO, Ledger
from rledger.ledger import LedgerExistsError, schema
from rledger.persample import UnsupportedPolicyError

N_STEPS, BATCH, EPOCHS = 128, 32, 3


class HiddenInfo(gym.Wrapper):
    """Adds a scalar 'hidden' to info (the cart position) and a state_id (rounded observation)."""

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        info["hidden"] = float(obs[0])
        info["state_id"] = int(np.round(obs[0] * 1000))
        return obs, r, term, trunc, info

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["state_id"] = int(np.round(obs[0] * 1000))
        return obs, info


def train(path, rollouts=4, n_envs=2, seed=0, **kwargs):
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed, wrapper_class=kwargs.pop("wrapper", None))
    model = InstrumentedPPO(
        "MlpPolicy", env, n_steps=N_STEPS, batch_size=BATCH, n_epochs=EPOCHS, seed=seed, ledger=path, **kwargs
    )
    model.learn(rollouts * N_STEPS * n_envs)
    return model, Ledger(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "run"
    return train(path, rollouts=4, n_envs=2, clip_range=0.05, wrapper=HiddenInfo, info_keys=("hidden",))


def test_no_row_lost(run):
    model, ledger = run
    tr, s, u = ledger.transitions(), ledger.samples(), ledger.updates()
    per_rollout = N_STEPS * model.n_envs
    assert len(tr) == 4 * per_rollout
    assert tr.groupby("rollout").size().eq(per_rollout).all()
    assert not tr.duplicated(["rollout", "t", "env"]).any()
    assert len(s) == 4 * per_rollout * EPOCHS
    # every transition appears exactly once per epoch in samples
    counts = s.groupby(["rollout", "epoch", "t", "env"]).size()
    assert counts.eq(1).all() and len(counts) == 4 * EPOCHS * per_rollout
    assert len(u) == 4 * EPOCHS * (per_rollout // BATCH)
    assert u.opt_step.tolist() == list(range(1, len(u) + 1))
    assert (u.batch_size == BATCH).all()


def test_return_is_advantage_plus_value(run):
    tr = run[1].transitions()
    np.testing.assert_array_equal(tr["return"].to_numpy(), (tr.advantage + tr.value).to_numpy(np.float32))


def test_gae_matches_hand_computation(run):
    """Advantages of steps whose episode ends inside the rollout, recomputed from the ledger alone."""
    model, ledger = run
    tr = ledger.transitions().sort_values(["rollout", "env", "t"])
    gamma, lam = model.gamma, model.gae_lambda
    checked = 0
    for (_, _), g in tr.groupby(["rollout", "env"]):
        done = (g.terminated | g.truncated).to_numpy()
        r = g.gae_reward.to_numpy(np.float64)
        v = g.value.to_numpy(np.float64)
        adv = np.full(len(g), np.nan)
        last = 0.0
        for i in range(len(g) - 1, -1, -1):
            if done[i]:
                last = r[i] - v[i]
            elif i + 1 < len(g) and not np.isnan(adv[i + 1]):
                delta = r[i] + gamma * v[i + 1] - v[i]
                last = delta + gamma * lam * last
            else:
                continue
            adv[i] = last
        ok = ~np.isnan(adv)
        checked += ok.sum()
        np.testing.assert_allclose(g.advantage.to_numpy()[ok], adv[ok], rtol=1e-4, atol=1e-4)
    assert checked > 500


def test_pg_grad_norm_identity_and_clipping(run):
    s = run[1].samples()
    unclipped = ~s.clipped
    expected = s.advantage_used.abs() * s.ratio * s.score_norm / BATCH
    np.testing.assert_allclose(s.pg_grad_norm[unclipped], expected[unclipped], rtol=1e-5, atol=1e-9)
    assert (s.pg_grad_norm[s.clipped] == 0).all()
    eps = 0.05
    formula = ((s.advantage_used > 0) & (s.ratio > 1 + eps)) | ((s.advantage_used < 0) & (s.ratio < 1 - eps))
    # float32 ratio vs the float64 bound: only exact-boundary ties could differ
    near = (np.abs(s.ratio - (1 + eps)) < 1e-6) | (np.abs(s.ratio - (1 - eps)) < 1e-6)
    assert (s.clipped[~near] == formula[~near]).all()
    assert s.clipped.any() and (~s.clipped).any()


def test_self_reinforcement_sign_rule(run):
    s = run[1].samples()
    live = ~s.clipped & (s.advantage_used != 0)
    assert (np.sign(s.self_reinforcement[live]) == np.sign(s.advantage_used[live])).all()
    assert (s.self_reinforcement[s.clipped] == 0).all()


def test_clip_fraction_is_sb3s_not_ours(run):
    s, u = run[1].samples(), run[1].updates()
    eps = 0.05
    mine = s.assign(out=(np.abs(s.ratio - 1) > eps)).groupby(["rollout", "epoch", "minibatch"]).out.mean()
    np.testing.assert_allclose(
        u.set_index(["rollout", "epoch", "minibatch"]).clip_fraction.loc[mine.index], mine, atol=1e-6
    )


def test_episodes_and_info_keys(run):
    ledger = run[1]
    tr, ep = ledger.transitions(), ledger.episodes()
    assert len(ep) > 0 and "hidden" in ep.columns and "hidden" in tr.columns
    sums = tr.groupby(["env", "episode"]).agg(
        reward=("reward", "sum"), n=("t", "size"), hsum=("hidden", "sum")
    )
    joined = ep.set_index(["env", "episode"]).join(sums)
    # an episode's steps all lie in the ledger (rollout 0 starts at reset), so sums match exactly
    np.testing.assert_allclose(joined["return"], joined["reward"])
    np.testing.assert_array_equal(joined["length"], joined["n"])
    np.testing.assert_allclose(joined["hidden"].to_numpy(), joined["hsum"].to_numpy(), rtol=1e-9)
    assert joined["hidden"].abs().sum() > 0
    # state_id comes from info when the env provides it (rounded cart position * 1000)
    assert tr.state_id.abs().max() < 10_000


class LoggedReward(gym.Wrapper):
    """Varying rewards (from the pole's angle), each step's (reward, terminated, truncated) logged."""

    def __init__(self, env):
        super().__init__(env)
        self.log = []

    def step(self, action):
        obs, _, term, trunc, info = self.env.step(action)
        r = float(np.round(1.0 + 10.0 * obs[2], 3))
        self.log.append((r, term, trunc))
        return obs, r, term, trunc, info


class StopAt(BaseCallback):
    """Stops the collection once ``n`` env steps have been taken."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def _on_step(self):
        return self.num_timesteps < self.n


def test_rewards_are_the_envs_own_across_truncations_and_a_stopped_collection(tmp_path):
    # short time limits: many truncated episodes, whose rewards SB3 bootstraps in place; a callback
    # stops the third rollout part-way, then learn() goes on from there
    env = make_vec_env(lambda: LoggedReward(gym.make("CartPole-v1", max_episode_steps=9)), n_envs=2, seed=0)
    model = InstrumentedPPO(
        "MlpPolicy", env, n_steps=N_STEPS, batch_size=BATCH, n_epochs=1, seed=0, ledger=tmp_path / "r"
    )
    stop_after = (2 * N_STEPS + 47) * 2
    model.learn(10 * N_STEPS * 2, callback=StopAt(stop_after))
    model.learn(N_STEPS * 2, reset_num_timesteps=False)
    ledger = Ledger(tmp_path / "r")
    tr = ledger.transitions().sort_values(["rollout", "t", "env"])
    assert sorted(tr.rollout.unique()) == [0, 1, 2]
    logs = env.get_attr("log")
    # no env is done at the stopped step: its rewards come from the recorder's copy of the env's own
    stopped = [log[2 * N_STEPS + 46] for log in logs]  # (reward, terminated, truncated) per env
    assert not any(term or trunc for _, term, trunc in stopped)
    for e in range(2):
        mine = tr[tr.env == e]
        log = np.array([r for r, _, _ in logs[e]], dtype=np.float32)
        # the stopped collection never reaches the ledger's transitions, but the env took its steps:
        # 46 in the buffer, then the 47th, after which the callback stopped it
        taken = np.r_[log[: 2 * N_STEPS], log[2 * N_STEPS + 47 :]]
        np.testing.assert_array_equal(mine.reward.to_numpy(), taken)
        trunc = np.array([tc and not term for _, term, tc in logs[e]])  # SB3's TimeLimit.truncated
        np.testing.assert_array_equal(
            mine.truncated.to_numpy(), np.r_[trunc[: 2 * N_STEPS], trunc[2 * N_STEPS + 47 :]]
        )
    assert tr.truncated.sum() > 20
    # SB3's own reward (the GAE input) carries the timeout bootstrap exactly where episodes were truncated
    boot = tr.gae_reward.to_numpy() != tr.reward.to_numpy()
    np.testing.assert_array_equal(boot, tr.truncated.to_numpy())
    # episodes: every finished episode's return and length from the env's own log, the stopped
    # collection's steps included
    ep = ledger.episodes().sort_values(["env", "episode"])
    for e in range(2):
        rets, lens, ret, n = [], [], 0.0, 0
        for r, term, trunc in logs[e]:
            ret, n = ret + np.float32(r), n + 1
            if term or trunc:
                rets.append(ret)
                lens.append(n)
                ret, n = 0.0, 0
        mine = ep[ep.env == e]
        np.testing.assert_allclose(mine["return"].to_numpy(), rets, rtol=1e-6)
        np.testing.assert_array_equal(mine["length"].to_numpy(), lens)


def test_state_id_hash_when_env_has_none(tmp_path):
    _, ledger = train(tmp_path / "r", rollouts=1, n_envs=1)
    tr = ledger.transitions()
    assert tr.state_id.nunique() > 0.9 * len(tr)  # continuous observations: nearly all distinct


def test_same_seed_same_ledger(tmp_path):
    _, a = train(tmp_path / "a", rollouts=2)
    _, b = train(tmp_path / "b", rollouts=2)
    for table in schema.TABLES:
        pd.testing.assert_frame_equal(a.table(table), b.table(table))


def test_background_thread_gives_the_same_ledger(tmp_path, monkeypatch):
    """The background thread (default) and train() itself write identical tables; the thread is gone
    once learn() returns. The last train() hands its steps to the thread in parts, the others in one."""
    import threading

    from rledger.persample.slots import StepBuffers
    from rledger.recorder import LAST_TRAIN_PARTS

    flushed: list[tuple[int, int]] = []  # (rollout, steps) of each hand-over
    real = StepBuffers.flush

    def counting(self, *args):  # noqa: ANN001, ANN202
        flushed.append((int(self.keys[0, 0]), self.m))
        return real(self, *args)

    monkeypatch.setattr(StepBuffers, "flush", counting)
    _, a = train(tmp_path / "a", rollouts=3, ent_coef=0.01)
    assert not [t for t in threading.enumerate() if t.name.startswith("rledger-ledger")]
    steps = EPOCHS * (N_STEPS * 2 // BATCH)
    assert [m for r, m in flushed if r < 2] == [steps, steps]
    assert [m for r, m in flushed if r == 2] == [steps // LAST_TRAIN_PARTS] * LAST_TRAIN_PARTS
    monkeypatch.undo()
    _, b = train(tmp_path / "b", rollouts=3, ent_coef=0.01, background=False)
    for table in schema.TABLES:
        pd.testing.assert_frame_equal(a.table(table), b.table(table))


def test_background_error_reaches_learn(tmp_path, monkeypatch):
    """An error in the background thread is raised by learn(), and no file of that rollout appears."""
    from rledger.ledger.writer import LedgerWriter

    real = LedgerWriter.write_arrow

    def failing(self, table, rollout, tbl):  # noqa: ANN001, ANN202
        if table == "samples" and rollout == 1:
            raise OSError("disk full (test)")
        return real(self, table, rollout, tbl)

    monkeypatch.setattr(LedgerWriter, "write_arrow", failing)
    with pytest.raises(OSError, match="disk full"):
        train(tmp_path / "r", rollouts=3)
    assert not (tmp_path / "r" / "samples" / "part-000001.parquet").exists()
    assert (tmp_path / "r" / "samples" / "part-000000.parquet").exists()
    assert not (tmp_path / "r" / "transitions" / "part-000002.parquet").exists()  # nothing after it


def test_reader_pushdown_and_sql(run):
    ledger = run[1]
    sub = ledger.samples(columns=["rollout", "t"], filters=[("rollout", ">=", 2)])
    assert list(sub.columns) == ["rollout", "t"] and sub.rollout.min() == 2
    n = ledger.sql("SELECT count(*) AS n FROM samples").n.iloc[0]
    assert n == len(ledger.samples(columns=["t"]))
    joined = ledger.samples_with_transitions(["rollout", "t", "env", "advantage", "advantage_used"])
    assert len(joined) == n
    info = ledger.run_info
    assert info["schema_version"] == schema.SCHEMA_VERSION and info["rollouts_written"] == 4
    assert {"python", "torch", "stable_baselines3", "gymnasium", "rledger"} <= set(info["versions"])


def test_existing_ledger_refused_then_overwritten(tmp_path):
    path = tmp_path / "run"
    train(path, rollouts=1)
    before = sorted(p.name for p in (path / "samples").iterdir())
    with pytest.raises(LedgerExistsError, match="overwrite"):
        InstrumentedPPO("MlpPolicy", "CartPole-v1", n_steps=N_STEPS, ledger=path)
    assert sorted(p.name for p in (path / "samples").iterdir()) == before
    _, ledger = train(path, rollouts=2, overwrite=True)
    assert ledger.updates().rollout.nunique() == 2


def test_record_every_and_table_selection(tmp_path):
    _, ledger = train(tmp_path / "r", rollouts=4, record_every=2, record=("samples", "episodes"))
    assert sorted(ledger.samples().rollout.unique()) == [0, 2]
    assert len(ledger.transitions()) == 0 and len(ledger.updates()) == 0
    assert len(ledger.episodes()) > 0


def test_no_partial_files(run):
    ledger = run[1]
    leftovers = list(ledger.run_dir.rglob("*.tmp"))
    assert leftovers == []
    json.loads((ledger.run_dir / "run.json").read_text())


def test_files_have_no_dictionary_encoding(run):
    """The ledger's Parquet files are written without dictionary pages (LedgerWriter.write_arrow: a
    dictionary over float columns costs CPU and bytes and is then abandoned), zstd-compressed."""
    import pyarrow.parquet as pq

    ledger = run[1]
    files = sorted(ledger.run_dir.rglob("*.parquet"))
    assert {f.parent.name for f in files} >= {"transitions", "samples", "updates", "episodes"}
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                where = (f.relative_to(ledger.run_dir), col.path_in_schema, col.encodings)
                assert not any("DICTIONARY" in e for e in col.encodings), where
                assert col.compression == "ZSTD"


def test_docs_match_schema():
    from pathlib import Path

    doc = Path(__file__).parents[1] / "docs" / "ledger.md"
    assert doc.read_text() == schema.markdown(), (
        "regenerate: python -m rledger.ledger.schema > docs/ledger.md"
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(use_sde=True), "gSDE"),
        (
            dict(policy_kwargs=dict(optimizer_class=th.optim.SGD, optimizer_kwargs=dict(momentum=0.9))),
            "momentum",
        ),
        (dict(policy_kwargs=dict(optimizer_class=th.optim.RMSprop)), "RMSprop"),
        (dict(record=("samples", "nope")), "unknown tables"),
        (dict(record_every=0), "record_every"),
        (dict(info_keys=("return",)), "collides"),
    ],
)
def test_clear_errors_at_construction(tmp_path, kwargs, match):
    env = "Pendulum-v1" if kwargs.get("use_sde") else "CartPole-v1"
    with pytest.raises((UnsupportedPolicyError, ValueError), match=match):
        InstrumentedPPO("MlpPolicy", env, n_steps=64, ledger=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_batchnorm_refused(tmp_path):
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class BN(BaseFeaturesExtractor):
        def __init__(self, space):
            super().__init__(space, 4)
            self.bn = th.nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(x)

    with pytest.raises(UnsupportedPolicyError, match="BatchNorm"):
        InstrumentedPPO(
            "MlpPolicy", "CartPole-v1", policy_kwargs=dict(features_extractor_class=BN), ledger=tmp_path / "y"
        )


def test_observation_hash_matches_reference_definition():
    """obs_hash_rows against a plain-integer implementation of the documented definition."""
    from rledger.collection import obs_hash_rows

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(50, 3)).astype(np.float32)  # 12 bytes: one padded word
    obs[7] = obs[3]
    mask = (1 << 64) - 1

    def reference(row: np.ndarray) -> int:
        data = row.tobytes() + b"\0" * ((-row.nbytes) % 8)
        h = 0xCBF29CE484222325
        for i in range(0, len(data), 8):
            h = ((h ^ int.from_bytes(data[i : i + 8], "little")) * 0x100000001B3) & mask
        h ^= h >> 30
        h = (h * 0xBF58476D1CE4E5B9) & mask
        h ^= h >> 27
        h = (h * 0x94D049BB133111EB) & mask
        h ^= h >> 31
        return h - (1 << 64) if h >= 1 << 63 else h

    got = obs_hash_rows(obs, len(obs))
    assert got.tolist() == [reference(r) for r in obs]
    assert got[7] == got[3] and len(set(got.tolist())) == 49


def test_second_learn_call_continues_the_ledger(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    model = InstrumentedPPO(
        "MlpPolicy", env, n_steps=N_STEPS, batch_size=BATCH, n_epochs=2, seed=0, ledger=tmp_path / "r"
    )
    model.learn(2 * N_STEPS)
    model.learn(2 * N_STEPS, reset_num_timesteps=False)
    ledger = Ledger(tmp_path / "r")
    tr = ledger.transitions()
    assert sorted(tr.rollout.unique()) == [0, 1, 2, 3]
    # the env was not reset between the calls, so episodes continue across them
    ep = ledger.episodes()
    assert ep.episode.is_monotonic_increasing and ep.episode.is_unique
    sums = tr.groupby("episode").reward.sum()
    np.testing.assert_allclose(ep.set_index("episode")["return"], sums.loc[ep.episode])


def test_replay_in_chunks_matches_one_batch(tmp_path, monkeypatch):
    """The batched replay of the buffered steps runs in chunks to bound memory; one step per chunk
    gives the same columns as the whole rollout at once."""
    from rledger.persample import slots

    _, whole = train(tmp_path / "whole", rollouts=3, clip_range=0.02, learning_rate=3e-3)
    monkeypatch.setattr(slots, "REPLAY_CHUNK_ELEMENTS", 1)  # -> one step per chunk
    _, chunked = train(tmp_path / "chunked", rollouts=3, clip_range=0.02, learning_rate=3e-3)
    a, b = whole.samples(), chunked.samples()
    assert a.clipped.sum() > 3 * 16  # clipped samples, whose scores come from the replay too
    assert (a.clipped == b.clipped).all()
    for col in ("score_norm", "pg_grad_norm", "adam_update_norm", "self_reinforcement", "loss_grad_norm"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-9, err_msg=col)


def test_reinforcement_query_against_pandas(run):
    """Ledger.reinforcement: cumulative self_reinforcement and counts per (state, action) before each
    bound, against a pandas join and group-by of the same tables."""
    _, ledger = run
    s = ledger.samples(columns=["rollout", "t", "env", "self_reinforcement"])
    s["self_reinforcement"] = s.self_reinforcement.astype(np.float64)  # DuckDB sums in float64
    tr = ledger.transitions(columns=["rollout", "t", "env", "state_id", "action"])
    tr["action"] = [int(a[0]) for a in tr.action]
    joined = s.merge(tr, on=["rollout", "t", "env"])
    got = ledger.reinforcement([1, 3, 4])
    assert set(got.before) == {1, 3, 4}
    for b in (1, 3, 4):
        want = (
            joined[joined.rollout < b]
            .groupby(["state_id", "action"])
            .agg(reinforcement=("self_reinforcement", "sum"), n=("self_reinforcement", "size"))
            .reset_index()
        )
        g = got[got.before == b].reset_index(drop=True)
        assert len(g) == len(want) > 0
        np.testing.assert_array_equal(
            g[["state_id", "action", "n"]].to_numpy(), want[["state_id", "action", "n"]].to_numpy()
        )
        np.testing.assert_allclose(g.reinforcement, want.reinforcement, rtol=1e-9, atol=1e-12)
    whole = ledger.reinforcement()
    assert (whole.before == 4).all() and whole.n.sum() == len(s)
    some = sorted(tr.state_id.unique()[:5])
    sub = ledger.reinforcement(2, states=some)
    assert set(sub.state_id) <= set(some) and len(sub) > 0
