"""InstrumentedPPO trains bit for bit like plain SB3 PPO with the same seed."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3 import PPO

from rledger import InstrumentedPPO, Ledger

SETTINGS = {
    "defaults": dict(env="CartPole-v1"),
    "no-adv-norm": dict(env="CartPole-v1", normalize_advantage=False),
    "clip-range-vf": dict(env="CartPole-v1", clip_range_vf=0.2),
    "target-kl-stops": dict(env="CartPole-v1", target_kl=0.001, learning_rate=3e-3),
    "ent-coef": dict(env="CartPole-v1", ent_coef=0.02),
    "box-actions": dict(env="Pendulum-v1", ent_coef=0.01, n_envs=2),
}


def _make(cls, setting: dict, **extra):
    setting = dict(setting)
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(setting.pop("env"), n_envs=setting.pop("n_envs", 1), seed=7)
    return cls("MlpPolicy", env, n_steps=128, batch_size=32, n_epochs=4, seed=11, **setting, **extra)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_parameters_bitwise_equal(tmp_path, name):
    steps = 3 * 128 * (2 if name == "box-actions" else 1)
    plain = _make(PPO, SETTINGS[name])
    plain.learn(steps)
    inst = _make(InstrumentedPPO, SETTINGS[name], ledger=tmp_path / "run")
    inst.learn(steps)
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
    geometry = model._geometry
    with pytest.raises(RuntimeError, match="boom"), geometry.capture():
        assert any(m._forward_hooks for m in model.policy.modules())
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.policy.modules())
