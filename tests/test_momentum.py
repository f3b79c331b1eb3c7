"""The momentum table against a brute-force float64 replay of Adam's first moment.

For each sample of the first rollout, its gradient (a naive per-sample autograd loop, float64) is added
once more, scaled by ``delta``, to the first moment of its own step; the first moment is replayed over
every later step with the recorded second moments, step counts and learning rates, and the difference
of the parameters at the end of the horizon (the end of ``learn()`` when the horizon is longer) is
divided by ``delta``. That is the sample's momentum-total update, computed without the recurrence the
ledger uses.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch as th
from naive import StepTape, naive_samples
from stable_baselines3.common.env_util import make_vec_env

from rledger import InstrumentedPPO, Ledger
from rledger.ledger import schema
from rledger.persample.momentum import default_horizon

TABLES = (*schema.DEFAULT_TABLES, "momentum")


def _run(tmp_path, monkeypatch, env_id, horizon, queue=None, rollouts=2, **kw):
    import rledger.persample.slots

    if queue is not None:  # small slot buffers: many flushes of a few steps, chunks of one step
        monkeypatch.setattr(rledger.persample.slots, "MAX_BUFFER_ELEMENTS", queue)
        monkeypatch.setattr(rledger.persample.slots, "REPLAY_CHUNK_ELEMENTS", 1)
    env = make_vec_env(env_id, n_envs=1, seed=3)
    model = InstrumentedPPO(
        "MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=4, learning_rate=lambda p: 1e-2 * p,
        seed=1, ledger=tmp_path / "run", record=TABLES, momentum_horizon=horizon, **kw,
    )  # fmt: skip
    tape = StepTape(model).install()
    first_buffer = []
    step = model.policy.optimizer.step

    def keep_first_rollout(*args, **kwargs):  # the naive loop reads rollout 0 from the buffer
        if not first_buffer:
            first_buffer.append(copy.deepcopy(model.rollout_buffer))
        return step(*args, **kwargs)

    model.policy.optimizer.step = keep_first_rollout
    model.learn(64 * rollouts)
    monkeypatch.undo()
    return model, tape, first_buffer[0], Ledger(tmp_path / "run")


def _adam_constants(model, tape, updates, names):
    group = model.policy.optimizer.param_groups[0]
    b1, b2 = group["betas"]
    ups = updates[~updates.stopped_early].reset_index(drop=True)
    assert len(ups) == len(tape.after)
    den, coef = [], []
    for s in range(len(tape.after)):
        k = float(tape.after[s][names[0]]["step"])
        v = th.cat([tape.after[s][n]["exp_avg_sq"].double().reshape(-1) for n in names])
        den.append(v.sqrt() / math.sqrt(1 - b2**k) + group["eps"])
        coef.append(float(ups.lr[s]) / (1 - b1**k))
    return b1, den, coef


def _replay(tape, names, b1, den, coef, last, extra=None, at=-1):
    """Adam's parameters after steps ``0 .. last - 1``, replayed in float64 from the recorded clipped
    gradients and second moments; ``extra`` ``(B, n)`` is added to the gradient of step ``at`` (one
    replay per row)."""
    theta = th.cat([tape.before[0][n].double().reshape(-1) for n in names])
    m = th.zeros_like(theta)
    if extra is not None:
        theta, m = theta.expand_as(extra).clone(), m.expand_as(extra).clone()
    for s in range(last):
        g = th.cat([tape.grads[s][n].double().reshape(-1) for n in names])
        if s == at:
            g = g + extra
        m = b1 * m + (1 - b1) * g
        theta = theta - coef[s] * m / den[s]
    return theta


def _brute_force(model, tape, updates, vectors, horizon):
    """Per step j of rollout 0 and each of its samples: the finite difference of the parameters at the
    end of the horizon when its clipped gradient (whole loss ``g``, policy term ``pg``) enters step j
    scaled by ``1 + delta``, divided by ``delta``."""
    names = vectors[0]["names"]
    b1, den, coef = _adam_constants(model, tape, updates, names)
    n_steps = len(tape.after)
    out = []
    delta = 1e-3
    for j, vec in enumerate(vectors):
        last = n_steps if horizon is None else min(n_steps, j + horizon)
        base = _replay(tape, names, b1, den, coef, last)
        res = {}
        for part in ("g", "pg"):
            extra = delta * vec["clip_coef"] * vec[part]
            res[part] = (_replay(tape, names, b1, den, coef, last, extra, j) - base) / delta
        out.append({"steps": last - j, **res, "s": vec["s"]})
    return out


def _replay_reproduces_training(model, tape, updates):
    """The replay's Adam is the run's: from the recorded gradients its final parameters equal the
    actual ones (relative to how far training moved them)."""
    names = [n for n, p in model.policy.named_parameters() if p.requires_grad]
    b1, den, coef = _adam_constants(model, tape, updates, names)
    final = _replay(tape, names, b1, den, coef, len(tape.after))
    start = th.cat([tape.before[0][n].double().reshape(-1) for n in names])
    actual = th.cat(
        [p.detach().double().reshape(-1) for n, p in model.policy.named_parameters() if p.requires_grad]
    )
    return float((final - actual).norm() / (actual - start).norm())


def _close(got, want, what, rtol=1e-4):
    floor = 1e-3 * np.abs(want).max() + 1e-30
    rel = np.abs(got - want) / np.maximum(np.abs(want), floor)
    print(f"{what}: max relative error {rel.max():.2e}")
    assert rel.max() <= rtol, f"{what}: max relative error {rel.max():.3g}"


CASES = {
    # to the end of learn(): rollout 0's samples count their own rollout's steps and all of rollout 1's
    "cartpole-to-the-end-ent-clip": dict(env_id="CartPole-v1", horizon=None, ent_coef=0.01, clip_range=0.05),
    # a horizon shorter than a rollout, met in the middle of flushes of one step each
    "cartpole-horizon-5-small-flushes": dict(env_id="CartPole-v1", horizon=5, queue=60_000, ent_coef=0.01),
    # a Gaussian policy: log_std's per-sample gradients enter without a Linear layer
    "pendulum-horizon-11": dict(env_id="Pendulum-v1", horizon=11, ent_coef=0.02),
}


@pytest.mark.parametrize("name", list(CASES))
def test_momentum_matches_brute_force_replay(tmp_path, monkeypatch, name):
    case = dict(CASES[name])
    horizon = case["horizon"]
    model, tape, buffer0, ledger = _run(tmp_path, monkeypatch, **case)
    samples, updates, mom = ledger.samples(), ledger.updates(), ledger.table("momentum")
    keys = ["rollout", "epoch", "minibatch", "t", "env"]
    # one momentum row per sample row, in the same order
    assert len(mom) == len(samples) == 2 * 64 * 4
    assert (mom[keys].to_numpy() == samples[keys].to_numpy()).all()
    run_info = ledger.run_info
    want_horizon = default_horizon(0.9) if horizon is None else horizon
    assert run_info["momentum_horizon"] == want_horizon == (197 if horizon is None else horizon)
    # steps counted: the horizon, or the steps left to the end of learn()
    n_total = len(updates)
    step_index = np.repeat(np.arange(n_total), 32)
    np.testing.assert_array_equal(mom.momentum_steps, np.minimum(want_horizon, n_total - step_index))
    np.testing.assert_allclose(mom.momentum_cut, 0.9 ** mom.momentum_steps.to_numpy(), rtol=1e-12)
    # the brute force, for rollout 0's samples (the naive gradients need the rollout's buffer)
    live = model.rollout_buffer
    model.rollout_buffer = buffer0
    vectors: list = []
    try:
        naive_samples(model, tape, samples, updates, vectors)
    finally:
        model.rollout_buffer = live
    assert len(vectors) == n_total // 2
    assert _replay_reproduces_training(model, tape, updates) < 1e-5
    ref = _brute_force(model, tape, updates, vectors, horizon)
    m0 = mom[mom.rollout == 0]
    want_norm = np.concatenate([r["g"].norm(dim=1).numpy() for r in ref])
    want_pg = np.concatenate([r["pg"].norm(dim=1).numpy() for r in ref])
    want_self = np.concatenate([(r["s"] * r["pg"]).sum(1).numpy() for r in ref])
    np.testing.assert_array_equal(m0.momentum_steps, np.repeat([r["steps"] for r in ref], 32))
    _close(m0.momentum_update_norm.to_numpy(np.float64), want_norm, f"{name} momentum_update_norm")
    _close(m0.pg_momentum_update_norm.to_numpy(np.float64), want_pg, f"{name} pg_momentum_update_norm")
    _close(
        m0.momentum_self_reinforcement.to_numpy(np.float64), want_self, f"{name} momentum_self_reinforcement"
    )
    # the check sees something: momentum adds to the fresh step, unclipped samples move
    s0 = samples[samples.rollout == 0]
    assert (m0.momentum_update_norm.to_numpy() >= s0.adam_update_norm.to_numpy() * (1 - 1e-5)).all()
    assert (m0.momentum_update_norm.to_numpy() > 1.5 * s0.adam_update_norm.to_numpy()).mean() > 0.5
    assert (want_pg > 0).mean() > 0.5
    # the ledger is whole, the manifests listing the momentum parts
    assert ledger.check() == 2
    for r in (0, 1):
        assert ledger.run_dir.joinpath("momentum", f"part-{r:06d}.parquet").is_file()


def test_momentum_same_in_background_and_in_place(tmp_path, monkeypatch):
    """The background thread and the calling thread, and flushes of any size, give the same table."""
    tables = []
    for sub, kw in (("bg", {}), ("fg", {"background": False})):
        _, _, _, ledger = _run(tmp_path / sub, monkeypatch, "CartPole-v1", 6, rollouts=3, **kw)
        tables.append(ledger.table("momentum"))
    _, _, _, small = _run(tmp_path / "small", monkeypatch, "CartPole-v1", 6, queue=60_000, rollouts=3)
    assert tables[0].equals(tables[1])
    small_t = small.table("momentum")
    for col in tables[0].columns:
        np.testing.assert_allclose(
            small_t[col].to_numpy(np.float64), tables[0][col].to_numpy(np.float64), rtol=1e-6
        )


def test_momentum_leaves_training_unchanged(tmp_path):
    """Parameters after learn() are bitwise plain SB3 PPO's with the momentum table recorded."""
    from stable_baselines3 import PPO

    params = []
    for cls, kw in (
        (PPO, {}),
        (InstrumentedPPO, dict(ledger=tmp_path / "run", record=TABLES, momentum_horizon=7)),
    ):
        env = make_vec_env("CartPole-v1", n_envs=2, seed=5)
        model = cls("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=3, seed=5, **kw)
        model.learn(64 * 2 * 3)
        params.append([p.detach().clone() for p in model.policy.parameters()])
    assert all(th.equal(a, b) for a, b in zip(*params, strict=True))


def test_momentum_refuses_what_it_cannot_compute(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    with pytest.raises(ValueError, match="record 'samples' too"):
        InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / "a", record=("transitions", "momentum"))
    with pytest.raises(ValueError, match="record_every=1"):
        InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / "b", record=TABLES, record_every=2)
    with pytest.raises(ValueError, match="needs Adam or AdamW"):
        InstrumentedPPO(
            "MlpPolicy", env, ledger=tmp_path / "c", record=TABLES,
            policy_kwargs=dict(optimizer_class=th.optim.SGD),
        )  # fmt: skip
    with pytest.raises(ValueError, match="momentum_horizon"):
        InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / "d", record=TABLES, momentum_horizon=0)
    assert not any((tmp_path / x).exists() for x in "abcd")
