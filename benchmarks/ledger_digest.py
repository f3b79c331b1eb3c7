"""A digest of every ledger table of fixed seeded runs, one run per per-sample path.

Run it on two commits (same machine, same packages) to check that a change of code structure left
every recorded number as it was: the printed SHA-256 of each table's values must be equal.

    python benchmarks/ledger_digest.py [--out digests.json] [--keep DIR]

Runs (CPU, 1 torch thread, 3 rollouts each): SB3's MLP policy on CartPole (batched mode, hand-written
replay) and on Pendulum (diagonal Gaussian, value clipping); a trainable Linear extractor shared by
actor and critic (batched mode, torch.func replay); SGD (the per-minibatch extra-backward mode); a conv
extractor (the generic torch.func path); Dict observations (MultiInputPolicy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' small wrappers

RUNS = {
    "mlp-cartpole": dict(env="CartPole-v1", n_envs=2, ent_coef=0.01),
    "mlp-pendulum-gaussian": dict(env="Pendulum-v1", n_envs=2, ent_coef=0.01, clip_range_vf=0.2),
    "shared-linear-func-replay": dict(env="CartPole-v1", ent_coef=0.05, extractor="shared"),
    "sgd-extra-backward": dict(env="CartPole-v1", ent_coef=0.01, optimizer="sgd"),
    "conv-generic": dict(env="CartPole-v1", wrapper="grid", extractor="conv", ent_coef=0.01),
    "dict-obs": dict(env="CartPole-v1", wrapper="dict", policy="MultiInputPolicy"),
}


def run(name: str, out: Path) -> dict[str, str]:
    from envs_for_tests import ConvExtractor, DictObs, GridObs, SharedLinearExtractor
    from stable_baselines3.common.env_util import make_vec_env

    from rledger import InstrumentedPPO, Ledger

    case = dict(RUNS[name])
    wrapper = {"grid": GridObs, "dict": DictObs, None: None}[case.pop("wrapper", None)]
    env = make_vec_env(case.pop("env"), n_envs=case.pop("n_envs", 1), seed=5, wrapper_class=wrapper)
    kwargs: dict = {}
    extractor = case.pop("extractor", None)
    if extractor is not None:
        cls = {"shared": SharedLinearExtractor, "conv": ConvExtractor}[extractor]
        kwargs.update(features_extractor_class=cls, net_arch=[16])
    if case.pop("optimizer", None) == "sgd":
        kwargs.update(optimizer_class=th.optim.SGD)
    model = InstrumentedPPO(
        case.pop("policy", "MlpPolicy"), env, n_steps=128, batch_size=32, n_epochs=3, seed=9,
        policy_kwargs=kwargs or None, ledger=out / name, **case,
    )  # fmt: skip
    model.learn(3 * 128 * env.num_envs)
    ledger = Ledger(out / name)
    digests = {}
    for table in ("transitions", "samples", "updates", "episodes"):
        df = ledger.table(table)
        h = hashlib.sha256()
        for col in df.columns:
            values = df[col].to_numpy()
            if values.dtype == object:  # list columns (multi-dimensional actions)
                values = np.stack([np.asarray(v, dtype=np.float32) for v in values])
            h.update(col.encode())
            h.update(np.ascontiguousarray(values).tobytes())
        digests[table] = f"{h.hexdigest()[:16]} ({len(df)} rows)"
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the digests to this JSON file")
    parser.add_argument(
        "--keep", type=Path, help="write the runs' ledgers here (a new folder) to compare them"
    )
    args = parser.parse_args()
    th.set_num_threads(1)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            result[name] = run(name, args.keep or Path(tmp))
            for table, digest in result[name].items():
                print(f"{name:28s} {table:12s} {digest}")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
