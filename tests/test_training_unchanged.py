"""InstrumentedPPO trains bit for bit like plain SB3 PPO with the same seed."""

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
from stable_baselines3 import PPO

from rledger import InstrumentedPPO, Ledger
from rledger.experiments.environment import RawReward

SETTINGS = {
    "defaults": dict(env="CartPole-v1"),
    "no-adv-norm": dict(env="CartPole-v1", normalize_advantage=False),
    "clip-range-vf": dict(env="CartPole-v1", clip_range_vf=0.2),
    "target-kl-stops": dict(env="CartPole-v1", target_kl=0.001, learning_rate=3e-3),
    "ent-coef": dict(env="CartPole-v1", ent_coef=0.02),
    "box-actions": dict(env="Pendulum-v1", ent_coef=0.01, n_envs=2),
    # every other way the per-sample engine can take (asserted below)
    "sgd-extra-backward": dict(
        env="CartPole-v1",
        ent_coef=0.01,
        policy_kwargs=dict(optimizer_class=th.optim.SGD),
        way="extra-backward",
    ),
    "adam-extra-backward": dict(
        env="CartPole-v1", target_kl=0.002, way="extra-backward", force_per_minibatch=True
    ),
    "func-replay-shared-linear": dict(
        env="CartPole-v1",
        ent_coef=0.02,
        policy_kwargs=dict(features_extractor_class=SharedLinearExtractor, net_arch=[16]),
        way="batched",
    ),
    "conv-path": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        ent_coef=0.01,
        policy_kwargs=dict(features_extractor_class=ConvExtractor, net_arch=[16]),
        way="extra-backward",
    ),
    "generic-grouped-conv": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        ent_coef=0.01,
        policy_kwargs=dict(features_extractor_class=GroupedConvExtractor, net_arch=[16]),
        way="generic",
    ),
    "dict-obs": dict(env="CartPole-v1", wrapper=DictObs, policy="MultiInputPolicy", way="batched"),
    "sgd-elu-gaussian": dict(
        env="Pendulum-v1",
        ent_coef=0.01,
        policy_kwargs=dict(optimizer_class=th.optim.SGD, activation_fn=th.nn.ELU, net_arch=[8]),
        way="extra-backward",
    ),
    # VecNormalize (rewards and observations) and frame stacking, as a spec's env.vec_normalize and
    # env.frame_stack build them, the env's reward recorded as the info key raw_reward
    "vec-normalize-frame-stack": dict(env="CartPole-v1", n_envs=2, vec="normalize+stack", ent_coef=0.01),
    # SB3's CnnPolicy (NatureCNN) on a 36x36 image, through the conv path
    "cnn-policy-nature": dict(env="CartPole-v1", wrapper=ImageObs, policy="CnnPolicy", way="extra-backward"),
    "sgd-conv": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        policy_kwargs=dict(
            features_extractor_class=ConvExtractor, net_arch=[16], optimizer_class=th.optim.SGD
        ),
        way="extra-backward",
    ),
    "impala-cnn": dict(
        env="CartPole-v1",
        wrapper=ImageObs,
        policy="CnnPolicy",
        policy_kwargs=dict(features_extractor_class=ImpalaExtractor),
        way="extra-backward",
    ),
}


def _make(cls, setting: dict, **extra):
    setting = dict(setting)
    from stable_baselines3.common.env_util import make_vec_env

    setting.pop("way", None)
    setting.pop("force_per_minibatch", None)
    env = make_vec_env(
        setting.pop("env"),
        n_envs=setting.pop("n_envs", 1),
        seed=7,
        wrapper_class=setting.pop("wrapper", None) or (RawReward if setting.get("vec") else None),
    )
    if setting.pop("vec", None):
        from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

        env = VecFrameStack(VecNormalize(env, gamma=0.99), n_stack=2)
    policy = setting.pop("policy", "MlpPolicy")
    return cls(policy, env, n_steps=128, batch_size=32, n_epochs=4, seed=11, **setting, **extra)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_parameters_bitwise_equal(tmp_path, monkeypatch, name):
    steps = 3 * 128 * SETTINGS[name].get("n_envs", 1)
    plain = _make(PPO, SETTINGS[name])
    plain.learn(steps)
    if SETTINGS[name].get("force_per_minibatch"):  # Adam through the per-minibatch mode
        import rledger.persample.engine

        monkeypatch.setattr(rledger.persample.engine, "batched_supported", lambda optimizer: False)
    extra = {"info_keys": ("raw_reward",)} if SETTINGS[name].get("vec") else {}
    inst = _make(InstrumentedPPO, SETTINGS[name], ledger=tmp_path / "run", **extra)
    inst.learn(steps)
    engine = inst._recorder.engine
    way = SETTINGS[name].get("way", "batched")
    assert (engine.path if way == "generic" else engine.mode) == way, "the setting took another way"
    p1, p2 = plain.policy.state_dict(), inst.policy.state_dict()
    assert p1.keys() == p2.keys()
    for key in p1:
        assert th.equal(p1[key], p2[key]), f"parameter {key} differs"
    # optimizer state too: the next update would be identical
    s1, s2 = plain.policy.optimizer.state_dict()["state"], inst.policy.optimizer.state_dict()["state"]
    for k in s1:
        for field in ("exp_avg", "exp_avg_sq"):
            assert th.equal(s1[k][field], s2[k][field])
    ledger = Ledger(tmp_path / "run")
    if SETTINGS[name].get("vec"):  # the normalized reward trained on, the env's own beside it
        tr = ledger.transitions(columns=["reward", "raw_reward"])
        assert (tr.raw_reward == 1.0).all() and not np.allclose(tr.reward, 1.0)
        n1, n2 = plain.get_env().venv, inst.get_env().venv  # the VecNormalize statistics agree too
        assert np.array_equal(n1.obs_rms.mean, n2.obs_rms.mean) and n1.ret_rms.var == n2.ret_rms.var
    ups = ledger.updates()
    assert ups.rollout.nunique() == 3
    if name == "target-kl-stops":
        assert ups.stopped_early.any(), "target_kl should have stopped an epoch early"
        stopped = ups[ups.stopped_early]
        assert (stopped.opt_step == -1).all() and stopped.grad_norm.isna().all()
        # no samples rows for the minibatch that made no step
        s = ledger.samples(columns=["rollout", "epoch", "minibatch"])
        keys = set(map(tuple, s.drop_duplicates().to_numpy()))
        for r in stopped.itertuples():
            assert (r.rollout, r.epoch, r.minibatch) not in keys


def test_hooks_do_not_leak(tmp_path):
    model = _make(InstrumentedPPO, SETTINGS["defaults"], ledger=tmp_path / "run")
    model.learn(256)
    for name, module in model.policy.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name}"
        assert not module._backward_hooks and not module._forward_pre_hooks


def test_hooks_removed_on_error(tmp_path):
    model = _make(InstrumentedPPO, SETTINGS["defaults"], ledger=tmp_path / "run")
    engine = model._recorder.engine
    with pytest.raises(RuntimeError, match="boom"), engine.capture():
        assert any(m._forward_hooks for m in model.policy.modules())
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.policy.modules())


def test_hooks_removed_when_train_raises(tmp_path, monkeypatch):
    """The per-minibatch mode's forward hooks are open for a whole train(); an error inside it leaves
    none behind once learn() has raised it."""
    from rledger.persample.engine import PerSampleEngine

    model = _make(InstrumentedPPO, SETTINGS["sgd-extra-backward"], ledger=tmp_path / "run")
    real, calls = PerSampleEngine.after_step, []

    def failing(self, *args):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 5:
            assert any(m._forward_hooks for m in model.policy.modules()), "hooks open during train()"
            raise RuntimeError("boom in train")
        return real(self, *args)

    monkeypatch.setattr(PerSampleEngine, "after_step", failing)
    with pytest.raises(RuntimeError, match="boom in train"):
        model.learn(256)
    assert model._recorder.engine.mode == "extra-backward"
    assert not any(m._forward_hooks for m in model.policy.modules())
