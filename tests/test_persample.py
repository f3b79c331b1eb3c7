"""Every per-sample column against a naive float64 loop with one autograd backward per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from envs_for_tests import (
    ConvExtractor,
    DictObs,
    GridObs,
    GroupedConvExtractor,
    ImageObs,
    ImpalaExtractor,
    SharedLinearExtractor,
)
from naive import StepTape, naive_samples
from stable_baselines3.common.env_util import make_vec_env

from rledger import InstrumentedPPO, Ledger

COLUMNS = [
    "advantage_used",
    "ratio",
    "score_norm",
    "pg_grad_norm",
    "entropy_grad_norm",
    "value_grad_norm",
    "loss_grad_norm",
    "adam_update_norm",
    "pg_adam_update_norm",
    "entropy_adam_update_norm",
    "value_adam_update_norm",
    "self_reinforcement",
]

CASES = {
    "cartpole-default-tanh-clip": dict(env="CartPole-v1", clip_range=0.03),
    "cartpole-relu-sep-ent-4envs": dict(
        env="CartPole-v1",
        n_envs=4,
        ent_coef=0.01,  # the entropy flows through the actor's layers
        policy_kwargs=dict(net_arch=dict(pi=[32, 16], vf=[24]), activation_fn=th.nn.ReLU),
    ),
    "pendulum-tanh": dict(env="Pendulum-v1", policy_kwargs=dict(net_arch=[32, 32])),
    "pendulum-relu-ent-4envs-vfclip": dict(
        env="Pendulum-v1",
        n_envs=4,
        ent_coef=0.02,
        clip_range_vf=0.1,
        policy_kwargs=dict(net_arch=dict(pi=[16], vf=[16, 16]), activation_fn=th.nn.ReLU),
    ),
    "cartpole-no-norm-small-queue": dict(env="CartPole-v1", normalize_advantage=False, queue=60_000),
    "shared-linear-extractor-ent": dict(
        env="CartPole-v1",
        ent_coef=0.05,
        policy_kwargs=dict(features_extractor_class=SharedLinearExtractor, net_arch=[16]),
    ),
    "conv-path": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        ent_coef=0.01,
        policy_kwargs=dict(features_extractor_class=ConvExtractor, net_arch=[16]),
        path="conv",
    ),
    # SB3's CnnPolicy (NatureCNN: 8x8/4, 4x4/2, 3x3/1 convs, shared by actor and critic) on 36x36
    # images. At learning rate 1e-2 NatureCNN's policy is near-deterministic by the third epoch, and
    # then float32 (in which SB3 forms d log pi / d logits = onehot - p) resolves a score norm only to
    # ~1e-5 of itself (measured: 2e-5 on a sample with 1 - p ~ 4e-3, the same for a float32 autograd
    # loop); the CNN cases train at 1e-3, where the comparison tests rledger's math, not that rounding.
    "nature-cnn-ent": dict(
        env="CartPole-v1",
        wrapper=ImageObs,
        policy="CnnPolicy",
        ent_coef=0.01,
        learning_rate=1e-3,
        path="conv",
    ),
    # a small IMPALA-style residual CNN (padding, max-pool, skip connections), separate extractors
    "impala-cnn-separate": dict(
        env="CartPole-v1",
        wrapper=ImageObs,
        policy="CnnPolicy",
        clip_range_vf=0.1,
        policy_kwargs=dict(features_extractor_class=ImpalaExtractor, share_features_extractor=False),
        learning_rate=1e-3,
        path="conv",
    ),
    "generic-path-grouped-conv": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        ent_coef=0.01,
        policy_kwargs=dict(features_extractor_class=GroupedConvExtractor, net_arch=[16]),
        path="generic",
    ),
    "dict-obs": dict(env="CartPole-v1", wrapper=DictObs, policy="MultiInputPolicy"),
    # 64 samples in minibatches of 24: a truncated last minibatch of 16 in every epoch
    "uneven-minibatches": dict(env="CartPole-v1", batch_size=24, ent_coef=0.01),
    # the per-minibatch mode (forward hooks, one more backward): optimizers the batched mode does not take
    "extra-backward-shared-ent": dict(
        env="CartPole-v1",
        mode="extra-backward",
        ent_coef=0.05,
        policy_kwargs=dict(features_extractor_class=SharedLinearExtractor, net_arch=[16]),
    ),
    # the torch.func replay, which policies other than SB3's MLPs take, on the MLP cases too
    "func-replay-pendulum-ent-vfclip": dict(
        env="Pendulum-v1",
        n_envs=4,
        replay="func",
        ent_coef=0.02,
        clip_range_vf=0.1,
        policy_kwargs=dict(net_arch=dict(pi=[16], vf=[16, 16]), activation_fn=th.nn.ReLU),
    ),
    "func-replay-cartpole-ent-clip": dict(env="CartPole-v1", replay="func", ent_coef=0.01, clip_range=0.03),
    "extra-backward-pendulum-vfclip": dict(
        env="Pendulum-v1", mode="extra-backward", ent_coef=0.02, clip_range_vf=0.1
    ),
    # plain SGD: the step scale is the learning rate (per-minibatch mode; generic path on a conv policy)
    "sgd-extra-backward-ent": dict(
        env="CartPole-v1",
        mode="extra-backward",
        ent_coef=0.01,
        policy_kwargs=dict(optimizer_class=th.optim.SGD),
    ),
    "sgd-conv": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        policy_kwargs=dict(
            features_extractor_class=ConvExtractor, net_arch=[16], optimizer_class=th.optim.SGD
        ),
        path="conv",
    ),
    # SGD's step scale is one number per layer: NatureCNN's conv layers take the Gram identity over
    # patches where it is cheaper (the 3x3 conv on a 3x3 map here) and materialize elsewhere
    "sgd-nature-cnn-ghost": dict(
        env="CartPole-v1",
        wrapper=ImageObs,
        policy="CnnPolicy",
        ent_coef=0.01,
        policy_kwargs=dict(optimizer_class=th.optim.SGD),
        learning_rate=1e-3,
        path="conv",
    ),
}


def run_case(tmp_path, monkeypatch, case: dict, n_steps: int = 64):
    import rledger.persample.engine
    import rledger.persample.replay
    import rledger.persample.slots

    case = dict(case)
    env = make_vec_env(
        case.pop("env"), n_envs=case.pop("n_envs", 1), seed=3, wrapper_class=case.pop("wrapper", None)
    )
    expect_path = case.pop("path", "linear")
    policy = case.pop("policy", "MlpPolicy")
    queue = case.pop("queue", None)
    mode = case.pop("mode", "batched")
    replay = case.pop("replay", None)
    if mode != "batched" and "optimizer_class" not in case.get("policy_kwargs", {}):
        # Adam in the per-minibatch mode, which SGD and several parameter groups take
        monkeypatch.setattr(rledger.persample.engine, "batched_supported", lambda optimizer: False)
    if replay == "func":  # SB3's MLP policies through the torch.func replay too
        monkeypatch.setattr(rledger.persample.replay, "mlp_plan", lambda *args: None)
    if queue is not None:  # small slot buffers: the batched computation flushes every few steps
        monkeypatch.setattr(rledger.persample.slots, "MAX_BUFFER_ELEMENTS", queue)
        monkeypatch.setattr(rledger.persample.slots, "REPLAY_CHUNK_ELEMENTS", 1)  # one step per chunk
    model = InstrumentedPPO(
        policy, env, n_steps=n_steps, batch_size=case.pop("batch_size", 32), n_epochs=4,
        learning_rate=case.pop("learning_rate", 1e-2),
        seed=1, ledger=tmp_path / "run", **case,
    )  # fmt: skip
    engine = model._recorder.engine
    assert engine.path == expect_path
    tape = StepTape(model).install()
    model.learn(n_steps * env.num_envs)
    monkeypatch.undo()
    if expect_path == "conv":
        assert engine.mode == "extra-backward"
    if expect_path == "linear":
        assert engine.mode == mode
        if mode == "batched":  # which replay ran: SB3's MLPs by hand unless told otherwise
            mlp = "features_extractor_class" not in case.get("policy_kwargs", {})  # param-free extractors
            assert (engine._replayer.plan is not None) == (mlp and replay != "func")
        if queue is not None:
            assert max(b.capacity for pool in engine._batches.values() for b in pool) < 5
    return model, tape, Ledger(tmp_path / "run")


@pytest.mark.parametrize("name", list(CASES))
def test_columns_match_naive_loop(tmp_path, monkeypatch, name):
    model, tape, ledger = run_case(tmp_path, monkeypatch, CASES[name])
    check_against_naive(name, model, tape, ledger)


def check_against_naive(name: str, model, tape: StepTape, ledger: Ledger) -> None:
    """Every column of rollout 0 within 1e-5 relative of the naive float64 loop (also used by the
    CUDA tests in test_device.py)."""
    samples, updates = ledger.samples(), ledger.updates()
    ref = naive_samples(model, tape, samples, updates)
    assert len(samples) == len(ref) == model.n_steps * model.n_envs * model.n_epochs
    assert (samples.t.to_numpy() == ref.t.to_numpy()).all()
    for col in COLUMNS:
        got, want = samples[col].to_numpy(np.float64), ref[col].to_numpy()
        # relative error; entries below 1e-3 of the column's largest magnitude are compared on that
        # scale, since float32 (which SB3 trains in) cannot give them a relative accuracy of 1e-5
        floor = 1e-3 * np.abs(want).max() + 1e-30
        if col == "entropy_grad_norm":
            # grad H = -sum_j p_j (log p_j + H) grad z_j cancels for a near-uniform policy: float32 (in
            # which SB3 computes the gradient) resolves it only to ~1e-7 of its natural scale
            # ent_coef / B * score_norm. Required: relative error 1e-5, or an absolute error within
            # 1e-6 of that scale (10 float32 ulps), whichever is looser.
            b = samples.groupby(["epoch", "minibatch"]).t.transform("size").to_numpy()  # each sample's B
            floor = np.maximum(floor, 0.1 * model.ent_coef / b * ref.score_norm.to_numpy())
        if col == "entropy_adam_update_norm":  # the same cancellation, through the step scale F
            b = samples.groupby(["epoch", "minibatch"]).t.transform("size").to_numpy()
            floor = np.maximum(floor, 0.1 * model.ent_coef / b * ref.score_step_norm.to_numpy())
        denom = np.maximum(np.abs(want), floor)
        rel = np.abs(got - want) / denom
        print(f"{name} {col}: max relative error {rel.max():.2e}")
        assert rel.max() <= 1e-5, f"{col}: max relative error {rel.max():.3g}"
    assert (samples.clipped.to_numpy() == ref.clipped.to_numpy()).all()
    if name == "cartpole-default-tanh-clip":  # clipped samples' scores come from the replay too
        assert samples.clipped.sum() > 10
    ups = updates[~updates.stopped_early]
    per_step = ref.groupby(["epoch", "minibatch"], sort=False)[["grad_norm", "clip_coef"]].first()
    np.testing.assert_allclose(ups.grad_norm.to_numpy(), per_step.grad_norm.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(ups.clip_coef.to_numpy(), per_step.clip_coef.to_numpy(), rtol=1e-5)
    # the check must be able to see something: these runs clip some samples and have nonzero columns
    assert ref.score_norm.min() > 0
    if model.ent_coef:
        assert ref.entropy_grad_norm.max() > 0


def test_clipping_happens_in_reference_runs(tmp_path, monkeypatch):
    _, _, ledger = run_case(tmp_path, monkeypatch, CASES["cartpole-default-tanh-clip"])
    s = ledger.samples()
    assert s.clipped.any() and not s.clipped.all(), "the test settings should clip some samples"


@pytest.mark.parametrize("n", [1, 7, 16, 33, 1000])
def test_clip_coefs_of_many_steps_equal_one_call_per_step(n):
    """The clip factors computed for many steps in one call are bitwise those of one call per step, as
    train() computed them before, on both sides of the threshold and at every vector-tail length."""
    from rledger.persample.loss import clip_coefs

    gen = th.Generator().manual_seed(n)
    norms = th.exp(4 * th.randn(n, generator=gen)).float()  # 1e-5 .. 1e5: clipped and not
    norms[0] = 0.5  # at the threshold
    many = clip_coefs(norms, 0.5)
    one_by_one = th.stack([th.clamp(0.5 / (g + 1e-6), max=1.0) for g in norms.unbind()])
    assert many.dtype == th.float32 and th.equal(many, one_by_one)
    if n > 1:
        assert (many < 1).any() and (many == 1).any()
