"""Device placement: the per-sample engine works wherever the policy lives.

This machine has no GPU. What a CUDA policy breaks is a tensor that rledger creates on the default
device (the CPU) and then mixes with the policy's tensors. The first tests catch exactly that on the
CPU: every method of the engine, its slot buffers, replay and momentum attribution runs with the
default device set to ``meta`` (a device without data), so a tensor made without the policy's device
lands on ``meta`` and the first operation that mixes it with the policy's CPU tensors raises. The
ledger of such a run must equal the ledger of a normal run of the same seed, table by table.

The tests marked ``cuda`` run the same settings on a CUDA policy and skip with a reason where there is
none.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pandas as pd
import pytest
import torch as th
from envs_for_tests import ConvExtractor, DictObs, GridObs, GroupedConvExtractor, SharedLinearExtractor
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import rledger.recorder
from rledger import InstrumentedPPO, Ledger
from rledger.ledger import schema
from rledger.persample.engine import PerSampleEngine
from rledger.persample.momentum import MomentumTracker
from rledger.persample.replay import Replayer
from rledger.persample.slots import StepBuffers

MOMENTUM = (*schema.DEFAULT_TABLES, "momentum")
WATCH = [(np.array([0.0, 0.1, 0.02, -0.1], dtype=np.float32), 0), (np.zeros(4, dtype=np.float32), 1)]

SETTINGS = {
    "batched-background": dict(env="CartPole-v1", ent_coef=0.01),
    "batched-momentum-influence": dict(
        env="CartPole-v1", record=MOMENTUM, momentum_horizon=9, watch=WATCH, background=False
    ),
    "gaussian": dict(env="Pendulum-v1", ent_coef=0.01, n_envs=2),
    "sgd-extra-backward": dict(
        env="CartPole-v1", ent_coef=0.01, policy_kwargs=dict(optimizer_class=th.optim.SGD)
    ),
    "func-replay": dict(
        env="CartPole-v1", policy_kwargs=dict(features_extractor_class=SharedLinearExtractor, net_arch=[16])
    ),
    "conv-path": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        ent_coef=0.01,
        policy_kwargs=dict(features_extractor_class=ConvExtractor, net_arch=[16]),
    ),
    "generic": dict(
        env="CartPole-v1",
        wrapper=GridObs,
        policy_kwargs=dict(features_extractor_class=GroupedConvExtractor, net_arch=[16]),
    ),
    "dict-obs": dict(env="CartPole-v1", wrapper=DictObs, policy="MultiInputPolicy"),
}


def _make(cls, setting: dict, device: str = "cpu", **extra):
    setting = dict(setting)
    env = make_vec_env(
        setting.pop("env"),
        n_envs=setting.pop("n_envs", 1),
        seed=5,
        wrapper_class=setting.pop("wrapper", None),
    )
    policy = setting.pop("policy", "MlpPolicy")
    if cls is PPO:
        for key in ("record", "momentum_horizon", "watch", "background"):
            setting.pop(key, None)
    return cls(policy, env, n_steps=64, batch_size=32, n_epochs=3, seed=2, device=device, **setting, **extra)


def _on_meta(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with th.device("meta"):
            return fn(*args, **kwargs)

    return wrapped


def default_device_meta(monkeypatch) -> None:
    """Every method of the engine's classes (also in the background thread: the wrapper sets the
    default device in the thread that calls it) and the recorder's hooks run with default device
    ``meta``."""
    for cls in (PerSampleEngine, StepBuffers, Replayer, MomentumTracker):
        for name, member in list(vars(cls).items()):
            if inspect.isfunction(member):
                monkeypatch.setattr(cls, name, _on_meta(member))
    for name in ("start_train", "before_step", "after_step", "end_train"):
        monkeypatch.setattr(
            rledger.recorder.Recorder, name, _on_meta(getattr(rledger.recorder.Recorder, name))
        )
    monkeypatch.setattr(rledger.recorder, "resolve_watch", _on_meta(rledger.recorder.resolve_watch))


def test_meta_default_device_catches_a_stray_tensor(tmp_path, monkeypatch):
    """The check can fail: with one tensor of the slot buffers made without the policy's device,
    training under it raises."""
    real = StepBuffers.__init__

    def stray(self, *args, **kwargs):  # noqa: ANN001, ANN202
        real(self, *args, **kwargs)
        self.terms = th.zeros(self.terms.shape)  # on the default device

    monkeypatch.setattr(StepBuffers, "__init__", stray)
    default_device_meta(monkeypatch)
    model = _make(InstrumentedPPO, SETTINGS["batched-momentum-influence"], ledger=tmp_path / "run")
    with pytest.raises(RuntimeError, match="meta"):
        model.learn(64)


def _tables(path) -> dict[str, pd.DataFrame]:
    ledger = Ledger(path)
    return {t: ledger.table(t) for t in schema.TABLES if (ledger.run_dir / t).is_dir()}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_engine_makes_no_tensor_off_the_policy_device(tmp_path, monkeypatch, name):
    normal = _make(InstrumentedPPO, SETTINGS[name], ledger=tmp_path / "normal")
    normal.learn(2 * 64 * SETTINGS[name].get("n_envs", 1))
    normal.sync_ledger()
    default_device_meta(monkeypatch)
    meta = _make(InstrumentedPPO, SETTINGS[name], ledger=tmp_path / "meta")
    meta.learn(2 * 64 * SETTINGS[name].get("n_envs", 1))
    meta.sync_ledger()
    monkeypatch.undo()
    want, got = _tables(tmp_path / "normal"), _tables(tmp_path / "meta")
    assert want.keys() == got.keys() and "samples" in got
    if "momentum" in SETTINGS[name].get("record", ()):
        assert {"momentum", "influence", "influence_steps"} <= got.keys()
    for table in want:
        pd.testing.assert_frame_equal(got[table], want[table], obj=table)


# ---------------------------------------------------------------------- on a CUDA device
cuda = pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device on this machine")


# the naive float64 loop's cases that take every way of the engine
NAIVE_CASES = [
    "cartpole-default-tanh-clip",
    "pendulum-relu-ent-4envs-vfclip",
    "cartpole-no-norm-small-queue",
    "shared-linear-extractor-ent",
    "conv-path",
    "nature-cnn-ent",
    "generic-path-grouped-conv",
    "dict-obs",
    "extra-backward-shared-ent",
    "sgd-extra-backward-ent",
    "sgd-nature-cnn-ghost",
]


@cuda
@pytest.mark.parametrize("name", NAIVE_CASES)
def test_cuda_columns_match_naive_loop(tmp_path, monkeypatch, name):
    """On a CUDA policy every column within 1e-5 relative of the naive float64 loop on the CPU, as
    on the CPU (TF32 off: cuDNN's convolutions would otherwise round to 10-bit mantissas)."""
    from test_persample import CASES, check_against_naive, run_case

    monkeypatch.setattr(th.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(th.backends.cuda.matmul, "allow_tf32", False)
    model, tape, ledger = run_case(tmp_path, monkeypatch, {**CASES[name], "device": "cuda"})
    assert model.device.type == "cuda"
    check_against_naive(name, model, tape, ledger)


@cuda
@pytest.mark.parametrize("name", ["cartpole-to-the-end-ent-clip", "pendulum-horizon-11"])
def test_cuda_momentum_matches_brute_force(tmp_path, monkeypatch, name):
    from test_momentum import check_momentum

    monkeypatch.setattr(th.backends.cuda.matmul, "allow_tf32", False)
    check_momentum(tmp_path, monkeypatch, name, device="cuda")


@cuda
def test_cuda_influence_matches_autograd(tmp_path, monkeypatch):
    from test_momentum import check_influence

    monkeypatch.setattr(th.backends.cuda.matmul, "allow_tf32", False)
    check_influence(tmp_path, monkeypatch, device="cuda")


@cuda
@pytest.mark.parametrize("name", ["batched-background", "sgd-extra-backward", "conv-path"])
def test_cuda_training_unchanged(tmp_path, monkeypatch, name):
    """On a CUDA policy, with deterministic algorithms, InstrumentedPPO's parameters equal plain PPO's."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    th.use_deterministic_algorithms(True)
    try:
        plain = _make(PPO, SETTINGS[name], device="cuda")
        plain.learn(2 * 64)
        inst = _make(InstrumentedPPO, SETTINGS[name], device="cuda", ledger=tmp_path / "run")
        inst.learn(2 * 64)
    finally:
        th.use_deterministic_algorithms(False)
    for key, value in plain.policy.state_dict().items():
        assert th.equal(value, inst.policy.state_dict()[key]), key


@cuda
def test_cuda_spec_runs_on_the_gpu(tmp_path):
    """A spec with ``device: cuda``: the runner trains there (run.json says so), the ledger is whole
    and the model loads back for evaluation."""
    import json

    import yaml
    from click.testing import CliRunner

    from rledger.cli import main

    spec = {
        "name": "gpu",
        "env": {"id": "CartPole-v1"},
        "device": "cuda",
        "seeds": [0],
        "total_timesteps": 512,
        "ppo": {"n_steps": 256, "batch_size": 64, "n_epochs": 2},
        "record": {"tables": [*schema.DEFAULT_TABLES, "momentum"], "every": 1},
        "eval": {"episodes": 2},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    run = tmp_path / "out" / "gpu" / "default" / "seed=0"
    assert json.loads((run / "ledger" / "run.json").read_text())["device"].startswith("cuda")
    assert Ledger(run / "ledger").check() == 2


def test_tensors_leave_the_device_before_numpy():
    """A CUDA tensor has no ``.numpy()``: every conversion in the engine, the recorder and the PPO
    subclass goes through ``.cpu()`` first (the meta check above cannot see this one on a CPU
    policy)."""
    import re
    from pathlib import Path

    root = Path(rledger.recorder.__file__).parent
    files = [
        *sorted((root / "persample").glob("*.py")),
        root / "recorder.py",
        root / "ppo.py",
        root / "collection.py",
    ]
    bad = [
        f"{path.name}:{i}: {line.strip()}"
        for path in files
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<!\.cpu\(\))\.numpy\(\)", line)
    ]
    assert not bad, "\n".join(bad)
    assert re.search(r"(?<!\.cpu\(\))\.numpy\(\)", "x.numpy()"), "the pattern must see a bare .numpy()"
