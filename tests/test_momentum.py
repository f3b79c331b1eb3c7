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


def _naive_rollout0(model, tape, buffer0, samples, updates):
    """The naive loop's per-step float64 gradients of rollout 0 (its buffer kept by :func:`_run`)."""
    live = model.rollout_buffer
    model.rollout_buffer = buffer0
    vectors: list = []
    try:
        naive_samples(model, tape, samples, updates, vectors)
    finally:
        model.rollout_buffer = live
    return vectors


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
        [p.detach().cpu().double().reshape(-1) for n, p in model.policy.named_parameters() if p.requires_grad]
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
    check_momentum(tmp_path, monkeypatch, name)


def check_momentum(tmp_path, monkeypatch, name: str, **kw) -> None:
    """Case ``name`` against the brute force (``kw``: more InstrumentedPPO arguments, e.g. a device;
    also used by test_device.py)."""
    case = dict(CASES[name])
    horizon = case["horizon"]
    model, tape, buffer0, ledger = _run(tmp_path, monkeypatch, **case, **kw)
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
    vectors = _naive_rollout0(model, tape, buffer0, samples, updates)
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
    """Parameters after learn() are bitwise plain SB3 PPO's with the momentum and influence tables
    recorded."""
    from stable_baselines3 import PPO

    params = []
    for cls, kw in (
        (PPO, {}),
        (InstrumentedPPO, dict(ledger=tmp_path / "run", record=TABLES, momentum_horizon=7, watch=WATCH)),
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


WATCH = [
    (np.array([0.0, 0.1, 0.02, -0.1], np.float32), 0),
    (np.array([0.0, 0.1, 0.02, -0.1], np.float32), 1),
    (np.array([0.3, -0.5, -0.05, 0.4], np.float32), 1),
]


def _watched_q(model, tape, names, watch):
    """Per optimizer step k: q_w = grad log pi(a_w|s_w) at theta_k (float64 autograd, names order),
    and log pi(a_w|s_w) at theta_k and at theta_{k+1}."""
    from naive import _float64_preprocessing

    policy64 = model.policy_class(
        model.observation_space, model.action_space, model.lr_schedule, **model.policy_kwargs
    )
    policy64.load_state_dict({k: v.cpu() for k, v in model.policy.state_dict().items()})
    policy64 = policy64.double()
    params = dict(policy64.named_parameters())
    obs = th.as_tensor(np.stack([o for o, _ in watch])).double()
    act = th.as_tensor([a for _, a in watch]).long()
    final = {n: p.detach().cpu().clone() for n, p in model.policy.named_parameters()}
    thetas = [*tape.before, final]
    qs, lps = [], []
    with _float64_preprocessing():
        for theta in thetas:
            with th.no_grad():
                for n in names:
                    params[n].copy_(theta[n].double())
            _, lp, _ = policy64.evaluate_actions(obs, act)
            rows = []
            for w in range(len(watch)):
                grads = th.autograd.grad(
                    lp[w], [params[n] for n in names], retain_graph=True, allow_unused=True
                )
                rows.append(
                    th.cat(
                        [
                            (g if g is not None else th.zeros_like(params[n])).reshape(-1)
                            for n, g in zip(names, grads, strict=True)
                        ]
                    )
                )
            qs.append(th.stack(rows))
            lps.append(lp.detach())
    flat = [th.cat([theta[n].double().reshape(-1) for n in names]) for theta in thetas]
    return qs, lps, flat


def test_influence_matches_autograd(tmp_path, monkeypatch):
    """influence (fresh and through the momentum) against float64 autograd of each watched log pi
    dotted with the naive per-sample update; influence_steps against the actual log-probabilities."""
    check_influence(tmp_path, monkeypatch)


def check_influence(tmp_path, monkeypatch, **kw) -> None:
    """``kw``: more InstrumentedPPO arguments, e.g. a device (also used by test_device.py)."""
    model, tape, buffer0, ledger = _run(
        tmp_path, monkeypatch, "CartPole-v1", None, watch=WATCH, ent_coef=0.01, clip_range=0.05, **kw
    )
    assert ledger.run_info["watch"]["labels"][2] == "observation 2, action 1"
    samples, updates = ledger.samples(), ledger.updates()
    inf, steps = ledger.table("influence"), ledger.table("influence_steps")
    w_n, n_total = len(WATCH), len(updates)
    assert len(inf) == len(samples) * w_n and len(steps) == n_total * w_n
    assert (inf.watch.to_numpy() == np.tile(np.arange(w_n), len(samples))).all()
    vectors = _naive_rollout0(model, tape, buffer0, samples, updates)
    names = vectors[0]["names"]
    qs, lps, flat = _watched_q(model, tape, names, WATCH)
    ref = _brute_force(model, tape, updates, vectors, None)
    fresh_want = np.concatenate(
        [((-v["clip_coef"] * v["pfac"] * v["g"]) @ qs[j].T).numpy() for j, v in enumerate(vectors)]
    )
    momentum_want = np.concatenate([(r["g"] @ qs[j].T).numpy() for j, r in enumerate(ref)])
    inf0 = inf[inf.rollout == 0]
    got_fresh = inf0.influence.to_numpy(np.float64).reshape(-1, w_n)
    got_momentum = inf0.momentum_influence.to_numpy(np.float64).reshape(-1, w_n)
    _close(got_fresh.ravel(), fresh_want.ravel(), "influence")
    _close(got_momentum.ravel(), momentum_want.ravel(), "momentum_influence")
    # per step: the actual log-probabilities, the first-order prediction, the samples' sum, the gap
    before = np.stack([lp.numpy() for lp in lps[:-1]]).ravel()
    after = np.stack([lp.numpy() for lp in lps[1:]]).ravel()
    predicted = np.stack([(qs[k] @ (flat[k + 1] - flat[k])).numpy() for k in range(n_total)]).ravel()
    _close(steps.log_prob_before.to_numpy(np.float64), before, "log_prob_before", rtol=1e-5)
    _close(steps.log_prob_after.to_numpy(np.float64), after, "log_prob_after", rtol=1e-5)
    _close(steps.predicted.to_numpy(), predicted, "predicted")
    fresh_sum = fresh_want.reshape(n_total // 2, 32, w_n).sum(1).ravel()
    _close(steps.fresh.to_numpy()[: len(fresh_sum)], fresh_sum, "fresh")
    gap_want = (after - before) - predicted
    # the recorded change differences float32 log-probabilities: exact to their rounding (~1e-7 nats)
    assert np.abs(steps.gap.to_numpy() - gap_want).max() < 2e-6
    np.testing.assert_allclose(steps.gap, steps.change - steps.predicted, rtol=0, atol=1e-12)
    # what the check can see: the first step has no carried momentum, later ones do; the gap is small
    first = steps[(steps.epoch == 0) & (steps.minibatch == 0) & (steps.rollout == 0)]
    np.testing.assert_allclose(first.predicted, first.fresh, rtol=1e-4)
    assert np.abs(steps.predicted - steps.fresh).max() > 10 * np.abs(first.predicted - first.fresh).max()
    assert np.abs(steps.gap).sum() < 0.05 * np.abs(steps.change).sum()


def test_influence_every_and_bad_watch(tmp_path, monkeypatch):
    _, _, _, ledger = _run(
        tmp_path, monkeypatch, "CartPole-v1", 6, rollouts=3, watch=WATCH, influence_every=2
    )
    assert sorted(ledger.table("influence").rollout.unique()) == [0, 2]
    assert sorted(ledger.table("influence_steps").rollout.unique()) == [0, 2]
    assert ledger.check() == 3
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    bad = [
        (dict(watch=[(np.zeros(3), 0)]), "watch\\[0\\]: the observation's shape"),
        (dict(watch=[(np.zeros(4), 2)]), "watch\\[0\\]: action 2 is not in Discrete\\(2\\)"),
        (dict(watch=[(5, 0)]), "watch\\[0\\]: state id 5 given, but the env has no observation_for"),
        (dict(watch=[np.zeros(4)]), "watch\\[0\\]: must be a \\(state, action\\) pair"),
    ]
    for i, (kw, message) in enumerate(bad):
        with pytest.raises(ValueError, match=message):
            InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / f"bad{i}", record=TABLES, **kw)
        assert not (tmp_path / f"bad{i}").exists()
    with pytest.raises(ValueError, match="record 'momentum' too"):
        InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / "x", watch=WATCH)
    with pytest.raises(ValueError, match="influence tables are recorded exactly when"):
        InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / "y", record=(*TABLES, "influence"))


def test_influence_on_a_gridworld_by_state_id(tmp_path):
    """Watched pairs given by state id: the env's own observation of that state."""
    import gymnasium as gym

    import rledger.envs  # noqa: F401 - registers the gridworlds

    env = make_vec_env("rledger/Tamper-v0", n_envs=2, seed=0)
    base = gym.make("rledger/Tamper-v0").unwrapped
    model = InstrumentedPPO(
        "MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, seed=0, ledger=tmp_path / "run",
        record=TABLES, watch=[(0, 0), (0, 3), (3, 1)], momentum_horizon=20,
    )  # fmt: skip
    watched = model._recorder.engine.momentum.watched
    np.testing.assert_array_equal(watched.obs[2].numpy(), base.observation_for(3))
    model.learn(64 * 2 * 2)
    ledger = Ledger(tmp_path / "run")
    assert ledger.run_info["watch"]["labels"] == [
        "state 0, action 0",
        "state 0, action 3",
        "state 3, action 1",
    ]
    steps = ledger.table("influence_steps")
    assert (
        len(steps) == 2 * 2 * 2 * 3 and np.isfinite(steps.gap).all()
    )  # rollouts x epochs x minibatches x pairs
    with pytest.raises(ValueError, match="state id 99999"):
        InstrumentedPPO("MlpPolicy", env, ledger=tmp_path / "bad", record=TABLES, watch=[(99999, 0)])


@pytest.mark.parametrize("case", ["weights-and-biases", "frozen-weights", "small-pieces"])
def test_influence_formula_against_materialized_gradients(monkeypatch, case):
    """influence() against the per-sample and watched gradients written out in full (float64): for
    each factor set, -clip * sum over the parameters of F * (e_i x_i^T) * (d_w x_w^T), biases
    included; with frozen weights (bias factors only) and with pieces of a few steps that do not
    divide the steps."""
    from torch import nn

    import rledger.persample.influence as inf

    if case == "small-pieces":
        monkeypatch.setattr(inf, "INFLUENCE_CHUNK_ELEMENTS", 3 * (4 + 2 * 3) * 5 * 2)  # 3 steps a piece
    g = th.Generator().manual_seed(0)
    s, b, w, n_f = 7, 4, 3, 2
    dims = [(2, 5), (5, 3)]
    layers = [(f"l{j}", nn.Linear(i, o).double(), {0, 1}) for j, (i, o) in enumerate(dims)]
    x_i = [th.randn(s, b, i, generator=g, dtype=th.float64) for i, _ in dims]
    d_i = [{p: th.randn(s, b, o, generator=g, dtype=th.float64) for p in (0, 1)} for _, o in dims]
    coef = th.randn(s, b, 2, generator=g, dtype=th.float64)
    clip = th.rand(s, 1, generator=g, dtype=th.float64)
    clip[2] = 0.0
    q = inf.WatchedGrads(
        [th.randn(s, w, i, generator=g, dtype=th.float64) for i, _ in dims],
        [th.randn(s, w, o, generator=g, dtype=th.float64) for _, o in dims],
        {},
    )
    facs = []
    for _ in range(n_f):
        fac = {f"l{j}.bias": th.rand(s, o, generator=g, dtype=th.float64) for j, (_, o) in enumerate(dims)}
        if case != "frozen-weights":
            fac |= {
                f"l{j}.weight": th.rand(s, o, i, generator=g, dtype=th.float64)
                for j, (i, o) in enumerate(dims)
            }
        facs.append(fac)
    got = inf.influence(layers, x_i, d_i, {}, coef, clip, q, facs)
    for k, fac in enumerate(facs):
        want = th.zeros(s, b, w, dtype=th.float64)
        for j in range(len(dims)):
            e = coef[..., 0, None] * d_i[j][0] + coef[..., 1, None] * d_i[j][1]  # (S, B, out)
            for st in range(s):
                for i in range(b):
                    for v in range(w):
                        gb, qb = e[st, i], q.d[j][st, v]
                        total = (fac[f"l{j}.bias"][st] * gb * qb).sum()
                        if f"l{j}.weight" in fac:
                            gw, qw = th.outer(gb, x_i[j][st, i]), th.outer(qb, q.inputs[j][st, v])
                            total += (fac[f"l{j}.weight"][st] * gw * qw).sum()
                        want[st, i, v] += total
        want = -clip[:, :, None] * want
        assert th.allclose(got[k], want, rtol=1e-12, atol=1e-12), (got[k] - want).abs().max()
        assert (got[k][2] == 0).all()
    with pytest.raises(ValueError, match="l0.weight has a factor in some sets only"):
        inf.influence(
            layers,
            x_i,
            d_i,
            {},
            coef,
            clip,
            q,
            [{"l0.weight": facs[0].get("l0.weight", th.ones(s, 5, 2, dtype=th.float64))}, {}],
        )
