"""A run's metadata (``run.json``): configuration, seed, versions, git commit, progress."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any


def ppo_config(model: Any) -> dict[str, Any]:
    """The PPO settings of ``model`` (a stable-baselines3 PPO), JSON-ready (schedules as their repr)."""

    def val(x: Any) -> Any:
        if isinstance(x, int | float | bool | str) or x is None:
            return x
        return repr(x)

    return {
        "policy_class": model.policy_class.__name__,
        "policy_kwargs": {k: val(v) for k, v in (model.policy_kwargs or {}).items()},
        "learning_rate": val(model.learning_rate),
        "n_steps": model.n_steps,
        "batch_size": model.batch_size,
        "n_epochs": model.n_epochs,
        "gamma": model.gamma,
        "gae_lambda": model.gae_lambda,
        "clip_range": val(model.clip_range(1.0)) if callable(model.clip_range) else val(model.clip_range),
        "clip_range_vf": val(model.clip_range_vf(1.0))
        if callable(model.clip_range_vf)
        else val(model.clip_range_vf),
        "normalize_advantage": model.normalize_advantage,
        "ent_coef": val(model.ent_coef),
        "vf_coef": model.vf_coef,
        "max_grad_norm": model.max_grad_norm,
        "target_kl": model.target_kl,
        "use_sde": model.use_sde,
        "device": str(model.device),
    }


def versions() -> dict[str, str]:
    import gymnasium
    import numpy as np
    import stable_baselines3
    import torch as th

    from rledger._version import __version__

    return {
        "python": platform.python_version(),
        "torch": th.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "rledger": __version__,
    }


SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""rledger's package folder (this file is ``rledger/ledger/runinfo.py``)."""


def git_commit() -> str | None:
    """The git commit of rledger's own source, where it is a git checkout (an editable install of a
    clone), whatever the working directory; None otherwise (a wheel: see :func:`code_fingerprint`)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.cache
def code_fingerprint() -> str:
    """sha256 of rledger's own source files (their paths and bytes) and of the versions of Python,
    torch, SB3, gymnasium and numpy: the code that ran, committed or not, installed from git or not."""
    root = SOURCE_ROOT
    h = hashlib.sha256(json.dumps(versions(), sort_keys=True).encode())
    for file in sorted(root.rglob("*.py")):
        h.update(file.relative_to(root).as_posix().encode() + b"\0")
        h.update(file.read_bytes())
    return h.hexdigest()


class RunMetadata:
    """Builds ``run.json`` for one model; versions and the git commit are read once."""

    def __init__(self, record: tuple[str, ...], record_every: int, info_keys: tuple[str, ...]):
        self.record, self.record_every, self.info_keys = record, record_every, info_keys
        self._versions: dict[str, str] | None = None
        self._commit: tuple[str | None] | None = None
        self.total_timesteps: int | None = None
        self.momentum_horizon: int | None = None  # the momentum table's, when it is recorded
        self.watch: dict[str, Any] | None = None  # the influence tables' watched pairs

    def __call__(self, model: Any, per_sample_path: str | None, rollouts_written: int) -> dict[str, Any]:
        env_id = None
        try:
            env_id = model.env.get_attr("spec")[0].id if model.env is not None else None
        except Exception:  # noqa: BLE001 - envs without a spec
            env_id = None
        if self._versions is None:
            self._versions = versions()
        if self._commit is None:
            self._commit = (git_commit(),)
        from rledger.ledger import schema

        return {
            "schema_version": schema.SCHEMA_VERSION,
            "tables": list(self.record),
            "record_every": self.record_every,
            "info_keys": list(self.info_keys),
            "seed": model.seed,
            "env_id": env_id,
            "n_envs": model.n_envs,
            "per_sample_path": per_sample_path,
            "config": ppo_config(model),
            "versions": self._versions,
            "git_commit": self._commit[0],
            "code_fingerprint": code_fingerprint(),
            "rollouts_written": rollouts_written,
            "num_timesteps": int(model.num_timesteps),
            "total_timesteps": self.total_timesteps,
            **({"momentum_horizon": self.momentum_horizon} if self.momentum_horizon is not None else {}),
            **({"watch": self.watch} if self.watch is not None else {}),
        }
