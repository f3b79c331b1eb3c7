"""A run's checkpoint between two rollouts, and the exact resume from it.

Every ``checkpoint_every`` rollouts (a spec field), at the start of a rollout's collection (after the
previous rollout's ``train()``), :class:`Checkpointer` captures everything the rest of the run depends
on: the policy's and the optimizer's state, the counters SB3 keeps (timesteps, updates, the episode
statistics of its logs), the vectorized env with its envs' states and random generators (pickled
with cloudpickle, which also takes the lambdas some wrappers hold, such as gymnasium's
FlattenObservation),
the last observations, the recorder's running episodes, and the random states of torch, numpy and
Python. The file, ``checkpoint.pt`` in the run folder, is written whole or not at all, and only once
the ledger holds every rollout before it (it is written after them by the ledger's background thread).

:func:`resume` puts that state into a freshly built model whose ledger is cut back to the checkpoint's
rollouts; training then goes on as if never interrupted: on CPU the resumed run's ledger equals an
uninterrupted run's, table by table (tested with ``kill -9``). Resuming unpickles the env, so a run
resumes only from the checkpoint its own run folder holds, and only under the code that wrote it:
the checkpoint carries :func:`~rledger.ledger.runinfo.code_fingerprint` (rledger's source and the versions of the packages
whose objects it pickles), and a checkpoint written by other code is not used (the run starts over;
an env pickled by an older version of its class can lack attributes the new code reads). Code outside
rledger that the env pickles (a user's own env module) must be unchanged too: it is not fingerprinted.
"""

from __future__ import annotations

import copy
import io
import pickle
import random
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from rledger.ledger.runinfo import code_fingerprint
from rledger.ledger.writer import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
FORMAT = 2


def capture(model: Any, phase: int) -> dict[str, Any]:
    """The state of ``model`` (an InstrumentedPPO between two rollouts), as copies."""
    return {
        "format": FORMAT,
        "code": code_fingerprint(),
        "phase": phase,
        "rollouts": model._recorder.rollout,
        "policy": {k: v.detach().clone() for k, v in model.policy.state_dict().items()},
        "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num),
        "ep_info_buffer": list(model.ep_info_buffer or ()),
        "ep_success_buffer": list(model.ep_success_buffer or ()),
        "last_obs": copy.deepcopy(model._last_obs),
        "last_episode_starts": copy.deepcopy(model._last_episode_starts),
        "env": cloudpickle.dumps(model.env, protocol=pickle.HIGHEST_PROTOCOL),
        "recorder": model._recorder.state(),
        "permutation_rng": None
        if model._permutation_rng is None
        else copy.deepcopy(model._permutation_rng.bit_generator.state),
        "rng": {
            "torch": th.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }


def write(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    th.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def read(path: Path) -> dict[str, Any] | None:
    """The checkpoint in the run folder ``path``, or None when there is none, it is unreadable or
    other code wrote it (:func:`code_fingerprint`): the run then starts over."""
    file = path / CHECKPOINT
    if not file.is_file():
        return None
    try:
        state = th.load(file, weights_only=False)  # our own run folder's file: see the module's note
    except Exception:  # noqa: BLE001 - any unreadable checkpoint means: start over
        return None
    if (
        not isinstance(state, dict)
        or state.get("format") != FORMAT
        or state.get("code") != code_fingerprint()
    ):
        return None
    return state


def ledger_continues(ledger: Path, config: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether the run's ledger can be continued from the checkpoint: recorded as the config says and
    whole up to the checkpoint's rollouts (otherwise the run starts over)."""
    from rledger.ledger.reader import continue_ledger

    record = config["record"]
    try:
        _, keep, _ = continue_ledger(
            ledger, record["tables"], record["every"], record["info_keys"], state["rollouts"]
        )
    except (ValueError, OSError):  # LedgerError included
        return False
    return keep == state["rollouts"]


def resume(model: Any, state: dict[str, Any]) -> None:
    """Put a checkpoint's state into ``model``, freshly built with the run's config and its ledger
    attached at the checkpoint's rollouts. The random states last, just before ``learn()``."""
    model.policy.load_state_dict(state["policy"])
    model.policy.optimizer.load_state_dict(state["optimizer"])
    model.num_timesteps = state["num_timesteps"]
    model._n_updates = state["n_updates"]
    model._episode_num = state["episode_num"]
    env = pickle.loads(state["env"])
    model.set_env(env, force_reset=False)
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    model._recorder.restore(state["recorder"], env.num_envs)
    if state.get("permutation_rng") is not None:  # the advantage-permutation null's generator
        model._permutation_rng = np.random.default_rng()
        model._permutation_rng.bit_generator.state = state["permutation_rng"]
    from collections import deque

    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=model._stats_window_size)
    rng = state["rng"]
    th.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


class Checkpointer(BaseCallback):
    """Writes the run's checkpoint at the start of every ``every``-th rollout (rollouts counted over
    the whole run; 0: never). ``phase`` names the ``learn()`` call (0; 1 after an opening)."""

    def __init__(self, path: Path, every: int, phase: int, skip: int | None = None):
        super().__init__()
        self.path, self.every, self.phase = Path(path), every, phase
        self.last = skip  # the rollout count of the checkpoint resumed from: not written again

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        recorder = self.model._recorder
        k = recorder.rollout
        if not self.every or k == 0 or k % self.every or k == self.last:
            return
        self.last = k
        try:
            state = capture(self.model, self.phase)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            # an env that cannot be pickled: the run goes on without checkpoints (and cannot resume)
            import warnings

            self.every = 0
            warnings.warn(
                f"{self.path}: checkpoints off, the env cannot be pickled ({type(exc).__name__}: {exc}); "
                "an interrupted run will start over",
                RuntimeWarning,
                stacklevel=1,
            )
            return
        file = self.path / CHECKPOINT
        if recorder.sink is None:
            write(file, state)
        else:  # after the ledger's rollouts before it are written
            recorder.sink.after_written(lambda: write(file, state))
