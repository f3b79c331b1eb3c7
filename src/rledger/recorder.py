"""What ``InstrumentedPPO``'s insertions into SB3's loops call: the recording of one run.

:class:`Recorder` holds a run's recording state across rollouts: the env-side arrays of the rollout
being collected (:mod:`rledger.collection`), the episodes, the per-sample engine
(:mod:`rledger.persample`) and the ledger sink (:mod:`rledger.ledger.sink`). ``collect_rollouts()``
calls :meth:`~Recorder.start_rollout`, :meth:`~Recorder.env_step` and :meth:`~Recorder.end_rollout`;
``train()`` calls :meth:`~Recorder.start_train`, then per minibatch :meth:`~Recorder.minibatch`,
:meth:`~Recorder.before_step` and :meth:`~Recorder.after_step` (or :meth:`~Recorder.stopped_early`),
and :meth:`~Recorder.end_train`, which hands the rollout's tables to the sink. None of it changes a
parameter, gradient, optimizer state or random number.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from rledger.collection import EpisodeTracker, RolloutArrays, initial_state_ids, next_state_ids, obs_hash_rows
from rledger.ledger import schema, summary
from rledger.ledger.runinfo import RunMetadata
from rledger.ledger.sink import LedgerSink
from rledger.persample import LossTerms, PerSampleEngine, clip_coefs
from rledger.persample.checks import check_action_space
from rledger.persample.influence import Watched

# the last train() of a learn() call hands its steps to the background thread in this many parts
LAST_TRAIN_PARTS = 4


class Recorder:
    """The recording of one ``InstrumentedPPO`` (see :class:`rledger.InstrumentedPPO` for the options)."""

    def __init__(
        self,
        ledger: str | os.PathLike[str] | None,
        record: tuple[str, ...],
        record_every: int,
        info_keys: tuple[str, ...],
        overwrite: bool,
        background: bool,
        keep: int | None = None,
        first_episode: np.ndarray | None = None,
        summaries: bool = True,
        momentum_horizon: int | None = None,
        watch: Sequence[tuple[Any, Any]] = (),
        influence_every: int = 1,
    ):
        """``keep``: continue the ledger in ``ledger`` after its first ``keep`` rollouts (numbering goes
        on from there); ``first_episode``: each env's first episode number (continuing a ledger);
        ``momentum_horizon``, ``watch``, ``influence_every``: see :class:`rledger.InstrumentedPPO`
        (``record`` lists the influence tables when ``watch`` is given)."""
        unknown = [t for t in record if t not in schema.TABLES]
        if unknown:
            raise ValueError(f"record: unknown tables {unknown}; choose from {list(schema.TABLES)}")
        if not isinstance(record_every, int) or record_every < 1:
            raise ValueError(f"record_every: must be an integer >= 1, got {record_every!r}")
        schema.check_info_keys(info_keys)
        if "momentum" in record and ("samples" not in record or record_every != 1):
            raise ValueError(
                "record: the momentum table is computed with the samples: record 'samples' too, with "
                f"record_every=1 (got record={list(record)}, record_every={record_every})"
            )
        influence = [t for t in record if t in schema.INFLUENCE_TABLES]
        if bool(watch) != bool(influence) or (influence and len(influence) != len(schema.INFLUENCE_TABLES)):
            raise ValueError(
                "watch: the influence tables are recorded exactly when pairs are watched: give watch=[...] "
                f"and record both {list(schema.INFLUENCE_TABLES)}, or neither (got record={list(record)}, "
                f"{len(list(watch))} watched pairs)"
            )
        if watch and "momentum" not in record:
            raise ValueError("watch: the influence tables need the momentum table; record 'momentum' too")
        self.momentum_horizon = momentum_horizon
        self.watch, self.influence_every = list(watch), influence_every
        self.record, self.record_every, self.info_keys = record, record_every, info_keys
        self.sink = (
            LedgerSink(ledger, info_keys, overwrite, background, keep, summaries)
            if ledger is not None
            else None
        )
        self.run_info = RunMetadata(record, record_every, info_keys)
        self.engine: PerSampleEngine | None = None
        self.rollout = keep or 0  # rollouts trained so far (numbered in the ledger)
        self._first_episode = first_episode
        self._steps_at: dict[int, int] = {}  # rollout -> timesteps when its train() ended
        self.arrays: RolloutArrays | None = None
        self._episodes: EpisodeTracker | None = None
        self._pending_episodes: list[dict[str, Any]] = []
        self._state_ids: np.ndarray | None = None
        self._info_state_ids = False
        self._per_step_info = False
        self._started = False
        # the train() call in progress
        self._model: Any = None
        self._engine_now: PerSampleEngine | None = None
        self._recording = False
        self._transitions: dict[str, Any] | None = None
        self._updates: list[dict[str, Any]] = []
        self._grad_norms: list[th.Tensor] = []  # of the steps taken; their clip factors at the end
        self._epoch = -1
        self._minibatch = -1
        self._update: dict[str, Any] = {}
        self._pending: Any = None
        self._keys: tuple[Any, Any] = (None, None)
        self._open = contextlib.ExitStack()

    # ------------------------------------------------------------------ setup
    def setup_model(self, model: Any) -> None:
        """After SB3 built the policy: refuse what cannot be recorded, build the per-sample engine."""
        check_action_space(model.action_space)
        if "samples" in self.record and self.sink is not None:
            self.engine = PerSampleEngine(model.policy, model.policy.optimizer, model.action_space)
            self.engine.validate()
            if "momentum" in self.record:
                tracker = self.engine.enable_momentum(self.momentum_horizon)
                self.run_info.momentum_horizon = tracker.horizon
            if self.watch:
                watched = resolve_watch(model, self.watch)
                self.engine.enable_influence(watched, self.influence_every)
                self.run_info.watch = {
                    "labels": watched.labels,
                    "state_ids": watched.states,
                    "actions": watched.actions.tolist(),
                    "influence_every": self.influence_every,
                }

    def setup_learn(self, model: Any, total_timesteps: int, env_reset: bool) -> None:
        """At each learn(): episodes running in an env that learn() reset are dropped; run.json."""
        if self._episodes is None:
            self._episodes = EpisodeTracker(model.n_envs, self.info_keys)
            if self._first_episode is not None:
                n = min(model.n_envs, len(self._first_episode))
                self._episodes.episode[:n] = self._first_episode[:n]
        if env_reset or not self._started:
            self._episodes.abandon_running()
            self._state_ids = initial_state_ids(model.env)
            self._info_state_ids = self._state_ids is not None
            self._started = True
        self.run_info.total_timesteps = total_timesteps
        if self.sink is not None:
            self.sink.open(self._info(model))

    def _info(self, model: Any) -> dict[str, Any]:
        return self.run_info(model, self.engine.path if self.engine is not None else None, self.rollout)

    def state(self) -> dict[str, Any]:
        """What continues across rollouts, as copies (a checkpoint between two rollouts): the rollout
        count, each env's running episode, the state ids of the observations the policy sees next."""
        ep = self._episodes
        return {
            "rollout": self.rollout,
            "started": self._started,
            "episodes": None
            if ep is None
            else {k: getattr(ep, k).copy() for k in ("episode", "ret", "length", "sums")},
            "state_ids": None if self._state_ids is None else self._state_ids.copy(),
            "info_state_ids": self._info_state_ids,
        }

    def restore(self, state: dict[str, Any], n_envs: int) -> None:
        """Take :meth:`state`'s result back (before ``learn()``, whose env must not be reset)."""
        self.rollout = int(state["rollout"])
        self._started = bool(state["started"])
        if state["episodes"] is not None:
            self._episodes = EpisodeTracker(n_envs, self.info_keys)
            for k, v in state["episodes"].items():
                getattr(self._episodes, k)[...] = v
        self._state_ids = None if state["state_ids"] is None else np.array(state["state_ids"])
        self._info_state_ids = bool(state["info_state_ids"])

    # ------------------------------------------------------------------ collection
    def start_rollout(self, n_rollout_steps: int, n_envs: int) -> None:
        self.arrays = RolloutArrays(n_rollout_steps, n_envs, len(self.info_keys))
        self._per_step_info = bool(self.info_keys) or self._info_state_ids

    def env_step(
        self, t: int, env: Any, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]
    ) -> None:
        """Step ``t`` as the env gave it, before SB3 adds the timeout bootstrap to ``rewards`` in place."""
        a = self.arrays
        assert a is not None
        a.filled, a.last_rewards = t + 1, rewards
        # count_nonzero, not dones.any(): the latter goes through Python-level numpy code, which cost
        # ~5 us per env step (about 1% of learn() on CartPole)
        if np.count_nonzero(dones):
            a.record_done(t, rewards, dones, infos)
        if self._per_step_info:
            a.record_info(t, infos, self.info_keys)
            if self._info_state_ids:
                if a.state_id is None:
                    a.state_id = np.zeros(a.reward.shape, dtype=np.int64)
                a.state_id[t] = self._state_ids
                self._state_ids = next_state_ids(env, infos, dones)

    def end_rollout(self, rollout_buffer: Any, complete: bool) -> None:
        """The rewards of the steps where no env was done, as SB3 stored them; when a callback stopped
        the collection (learn() ends without train()), the finished episodes."""
        assert self.arrays is not None
        self.arrays.fill_rewards(rollout_buffer.rewards, rollout_buffer.pos)
        bad = ~np.isfinite(self.arrays.reward[: self.arrays.filled])  # as the buffer holds them (float32)
        if bad.any():
            t, e = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(
                f"env {e} gave a non-finite reward ({float(self.arrays.reward[t, e])} in float32, as SB3 stores "
                f"it) at step {t} of rollout {self.rollout}; training stops before it uses that rollout "
                "(the ledger of earlier rollouts is complete). Check the env's reward, or scale it down"
            )
        if not complete and self._episodes is not None:
            _, rows = self._episodes.consume(self.rollout, self.arrays)
            self._pending_episodes.extend(rows)

    # ------------------------------------------------------------------ training
    def start_train(self, model: Any) -> None:
        """Before SB3's train() body: the rollout's episodes and transitions (read before the rollout
        buffer's get() flattens it), and the per-sample engine started for this call."""
        self._model = model
        self._recording = self.sink is not None and self.rollout % self.record_every == 0
        assert self._episodes is not None and self.arrays is not None
        episode_ids, finished = self._episodes.consume(self.rollout, self.arrays)
        self._pending_episodes.extend(finished)
        self._transitions = (
            self._transition_columns(model, episode_ids)
            if self._recording and "transitions" in self.record
            else None
        )
        self._updates, self._grad_norms = [], []
        self._epoch = self._minibatch = -1
        engine = self._engine_now = self.engine if self._recording else None
        if self.sink is not None:
            self.sink.raise_error()
        if engine is None:
            return
        buf = model.rollout_buffer
        opt_steps = model.n_epochs * -(-(buf.buffer_size * buf.n_envs) // model.batch_size)
        # the last train() of learn(): learn() waits for its columns, so hand them to the thread in
        # parts while training runs (each rollout otherwise goes in one piece, when its train() ends:
        # fewer, longer calls in the thread slow the next collection less)
        background = self.sink is not None and self.sink.background
        last = background and model.num_timesteps >= model._total_timesteps
        engine.start(
            lambda t_env: fetch_samples(model, t_env),
            opt_steps,
            model.n_epochs,
            self.sink.submit if background else None,  # type: ignore[union-attr]
            flush_every=-(-opt_steps // LAST_TRAIN_PARTS) if last else None,
            max_grad_norm=model.max_grad_norm,
        )
        self._open.enter_context(engine.capture())  # forward hooks in the extra-backward mode only

    def minibatch(
        self,
        epoch: int,
        approx_kl: Any,
        policy_loss: float,
        value_loss: float,
        entropy_loss: float,
        clip_fraction: float,
        batch_size: int,
    ) -> None:
        """A minibatch's loss figures, once SB3 has computed them (before its target_kl check)."""
        self._minibatch = self._minibatch + 1 if epoch == self._epoch else 0
        self._epoch = epoch
        self._update = {
            "rollout": self.rollout,
            "epoch": epoch,
            "minibatch": self._minibatch,
            "lr": float(self._model.policy.optimizer.param_groups[0]["lr"]),
            "approx_kl": float(approx_kl),
            "policy_loss": policy_loss,
            "value_loss": value_loss,
            "entropy_loss": entropy_loss,
            "clip_fraction": clip_fraction,
            "batch_size": batch_size,
        }

    def stopped_early(self) -> None:
        """target_kl stopped training at this minibatch: its update row, with no optimizer step."""
        nan = np.nan
        self._updates.append(
            {**self._update, "opt_step": -1, "grad_norm": nan, "clip_coef": nan, "stopped_early": True}
        )

    def before_step(
        self,
        rollout_data: Any,
        actions: th.Tensor,
        log_prob: th.Tensor,
        entropy: th.Tensor | None,
        values: th.Tensor,
        advantages: th.Tensor,
        ratio: th.Tensor,
        clip_range: float,
        clip_range_vf: float | None,
    ) -> None:
        """The minibatch's loss inputs, while its graph is alive (before ``loss.backward()``)."""
        engine = self._engine_now
        if engine is None:
            return
        model = self._model
        terms = LossTerms(
            advantages, ratio, clip_range, values, rollout_data.old_values, rollout_data.returns,
            clip_range_vf, model.ent_coef, model.vf_coef,
        )  # fmt: skip
        self._pending = engine.before_step(
            rollout_data.observations, actions, log_prob, entropy, values, terms
        )
        self._keys = (rollout_data.t, rollout_data.env)

    def after_step(self, grad_norm: th.Tensor) -> None:
        """After the optimizer step: its update row, and its samples' columns from the engine."""
        self._grad_norms.append(grad_norm)
        optimizer = self._model.policy.optimizer
        nan = np.nan  # grad_norm and clip_coef: for all steps at once in end_train()
        self._updates.append(
            {
                **self._update,
                "opt_step": _opt_step(optimizer),
                "grad_norm": nan,
                "clip_coef": nan,
                "stopped_early": False,
            }
        )
        if self._engine_now is not None:
            base = {
                "rollout": self.rollout,
                "epoch": self._epoch,
                "minibatch": self._minibatch,
                "t": self._keys[0],
                "env": self._keys[1],
            }
            self._engine_now.after_step(self._pending, grad_norm, base)
            self._pending = None

    def end_train(self, logger: Any) -> None:
        """After SB3's logs: the steps' gradient norms and clip factors (rows and logs), and the
        rollout's tables handed to the sink."""
        self._open.close()
        model = self._model
        if self._grad_norms:
            norms = th.stack(self._grad_norms)
            norm_list, coef_list = norms.tolist(), clip_coefs(norms, model.max_grad_norm).tolist()
            taken = (row for row in self._updates if not row["stopped_early"])
            for row, norm, coef in zip(taken, norm_list, coef_list, strict=True):
                row["grad_norm"], row["clip_coef"] = norm, coef
            logger.record("train/grad_norm", float(np.mean(norm_list)))
            logger.record("train/clip_coef", float(np.mean(coef_list)))
        samples = self._engine_now.finish() if self._engine_now is not None else []
        rollout = self.rollout
        self.rollout += 1
        episodes, self._pending_episodes = self._pending_episodes, []
        self._model = self._engine_now = None
        if self.sink is None:
            return
        recording = self._recording
        self._steps_at[rollout] = int(model.num_timesteps)
        # the rollouts whose samples the thread has written since
        summary.write(logger, self.sink.take_summaries(), self._steps_at, int(model.num_timesteps))
        self.sink.write_rollout(
            rollout,
            self._info(model),
            transitions=self._transitions,
            samples=samples if recording and "samples" in self.record else None,
            updates=self._updates if recording and "updates" in self.record else None,
            episodes=episodes if "episodes" in self.record else None,
            n_envs=model.n_envs,
            discrete=isinstance(model.action_space, spaces.Discrete),
            momentum=self.engine.momentum if self.engine is not None else None,
        )
        self._transitions = None

    def end_learn(self) -> None:
        """A ``learn()`` call ended normally: the momentum attribution's last steps are counted to
        here, and their rows written (after every rollout handed over)."""
        tracker = self.engine.momentum if self.engine is not None else None
        if tracker is not None and self.sink is not None:
            self.sink.end_momentum(tracker)

    # ------------------------------------------------------------------ the end of learn()
    def close(self) -> None:
        """Remove any forward hooks (a train() that raised) and wait for the ledger to be written."""
        self._open.close()
        self.sync()

    def sync(self) -> None:
        if self.sink is not None:
            self.sink.sync()

    def log_remaining(self, logger: Any, step: int) -> None:
        """After a ``learn()`` that ended normally (and :meth:`sync`): the summaries of its last
        rollouts, which no later ``train()`` writes."""
        if self.sink is not None:
            summary.write(logger, self.sink.take_summaries(), self._steps_at, step)

    def _transition_columns(self, model: Any, episode_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Transitions of the rollout just collected (read before get() flattens the buffer)."""
        buf = model.rollout_buffer
        a = self.arrays
        assert a is not None and not buf.generator_ready
        n_steps, n_envs = buf.buffer_size, buf.n_envs
        # column order: row = t * n_envs + env (time-major)
        t_idx, env_idx = np.meshgrid(np.arange(n_steps), np.arange(n_envs), indexing="ij")
        cols: dict[str, Any] = {
            "rollout": np.full(n_steps * n_envs, self.rollout, dtype=np.int32),
            "t": t_idx.reshape(-1).astype(np.int32),
            "env": env_idx.reshape(-1).astype(np.int16),
            "episode": episode_ids.reshape(-1),
            "state_id": (
                a.state_id.reshape(-1)
                if a.state_id is not None
                else obs_hash_rows(buf.observations, n_steps * n_envs)
            ),
            "action": buf.actions.reshape(n_steps * n_envs, -1).astype(np.float32),
            "reward": a.reward.reshape(-1),
            "gae_reward": buf.rewards.reshape(-1).astype(np.float32),
            "terminated": (a.done & ~a.truncated).reshape(-1),
            "truncated": a.truncated.reshape(-1),
            "value": buf.values.reshape(-1),
            "log_prob": buf.log_probs.reshape(-1),
            "advantage": buf.advantages.reshape(-1),
            "return": buf.returns.reshape(-1),
        }
        for j, key in enumerate(self.info_keys):
            cols[key] = a.info[:, :, j].reshape(-1)
        return cols


def resolve_watch(model: Any, pairs: Sequence[tuple[Any, Any]]) -> Watched:
    """The watched (state, action) pairs as the policy sees them: a state is an observation (as the
    env gives it) or, for envs with ``observation_for(state_id)`` (rledger's gridworlds), an integer
    state id; an action as the action space holds it."""
    space, act_space = model.observation_space, model.action_space
    obs_list, act_list, labels, states = [], [], [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"watch[{i}]: must be a (state, action) pair, got {pair!r}")
        state, action = pair
        if isinstance(state, (int, np.integer)) and not isinstance(state, bool):
            try:
                obs = model.env.env_method("observation_for", int(state), indices=[0])[0]
            except AttributeError:
                raise ValueError(
                    f"watch[{i}]: state id {state} given, but the env has no observation_for(state_id); "
                    "give the observation instead"
                ) from None
            except ValueError as exc:
                raise ValueError(f"watch[{i}]: {exc}") from None
            label = f"state {int(state)}"
            states.append(int(state))
        else:
            obs = state
            label = f"observation {i}"
            states.append(None)
        if isinstance(space, spaces.Dict):
            if not isinstance(obs, dict) or set(obs) != set(space.spaces):
                raise ValueError(
                    f"watch[{i}]: the observation must be a dict with keys {sorted(space.spaces)}"
                )
            obs = {k: np.asarray(v, dtype=space.spaces[k].dtype) for k, v in obs.items()}
            bad = [k for k, v in obs.items() if v.shape != space.spaces[k].shape]
        else:
            obs = np.asarray(obs, dtype=space.dtype)
            bad = [] if obs.shape == space.shape else ["shape"]
        if bad:
            raise ValueError(
                f"watch[{i}]: the observation's shape does not match the observation space {space}"
            )
        if isinstance(act_space, spaces.Discrete):
            if not isinstance(action, (int, np.integer)) or not act_space.contains(int(action)):
                raise ValueError(f"watch[{i}]: action {action!r} is not in {act_space}")
            act = np.array([int(action) - int(act_space.start)], dtype=np.float32)
        else:
            act = np.asarray(action, dtype=np.float32).reshape(-1)
            if act.shape != (int(np.prod(act_space.shape)),):
                raise ValueError(f"watch[{i}]: action {action!r} does not match the action space {act_space}")
        obs_list.append(obs)
        act_list.append(act)
        labels.append(f"{label}, action {action if np.isscalar(action) else list(act)}")
    if isinstance(space, spaces.Dict):
        obs_t: Any = {
            k: th.as_tensor(np.stack([o[k] for o in obs_list]), device=model.device) for k in space.spaces
        }
    else:
        obs_t = th.as_tensor(np.stack(obs_list), device=model.device)
    act_t = th.as_tensor(np.stack(act_list), device=model.device)
    if isinstance(act_space, spaces.Discrete):
        act_t = act_t.long().flatten()
    return Watched(obs_t, act_t, labels, states)


def fetch_samples(model: Any, t_env: np.ndarray) -> tuple[Any, th.Tensor]:
    """Observations and actions (as train() feeds them to the policy) of (t, env) pairs of the
    rollout in the buffer (which get() has flattened env-major)."""
    buf = model.rollout_buffer
    flat = t_env[:, 1] * buf.buffer_size + t_env[:, 0]
    if isinstance(buf.observations, dict):
        obs: Any = {k: buf.to_torch(v[flat]) for k, v in buf.observations.items()}
    else:
        obs = buf.to_torch(buf.observations[flat])
    actions = buf.to_torch(buf.actions[flat].astype(np.float32, copy=False))
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    return obs, actions


def _opt_step(optimizer: th.optim.Optimizer) -> int:
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                return int(state["step"])
    return -1
