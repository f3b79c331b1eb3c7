"""``InstrumentedPPO``: stable-baselines3's PPO with a ledger of every update, training unchanged.

``train()`` mirrors SB3 2.9's ``PPO.train()`` line for line, and ``collect_rollouts()`` its
``OnPolicyAlgorithm.collect_rollouts()``; beside each named quantity they record what the ledger
needs. The extra work reads the autograd graph and the optimizer state but changes no
parameter, gradient, optimizer state or random number, so the parameters after ``learn()`` are
bitwise equal to plain PPO's with the same seed (tested).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import gymnasium
import numpy as np
import stable_baselines3
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from rledger import __version__
from rledger.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rledger.geometry import LossTerms, SampleGeometry, UnsupportedPolicyError, clip_coefs, combine
from rledger.ledger import schema
from rledger.ledger.writer import LedgerWriter
from rledger.recorder import EpisodeTracker, RolloutArrays, initial_state_ids, next_state_ids, obs_hash_rows

ALL_TABLES = schema.TABLES
# the last train() of a learn() call hands its steps to the background thread in this many parts
LAST_TRAIN_PARTS = 4
T = TypeVar("T")


class InstrumentedPPO(PPO):
    """PPO that writes a ledger of every sample of every minibatch of every epoch.

    Takes every argument of :class:`stable_baselines3.PPO`, plus:

    :param ledger: run directory to write the ledger to (``None``: record nothing).
    :param record: which tables to write, a subset of
        ``("transitions", "samples", "updates", "episodes")``; default all.
    :param record_every: write transitions, samples and updates for every Nth rollout only
        (episodes are always written).
    :param info_keys: scalar ``info`` keys copied into ``transitions`` (per step) and ``episodes``
        (summed over the episode), e.g. ``("hidden_reward",)``.
    :param overwrite: replace an existing non-empty ledger directory.
    :param background: compute the batched per-sample columns and write each rollout's ledger files in
        a background thread (one per model), while the next rollout is collected (the last ``train()``
        of a ``learn()`` call hands its steps over in parts while it trains); ``learn()`` waits for it
        before it returns, and :meth:`sync_ledger` does so on demand. ``False``: all of it inside
        ``train()``. The ledger is the same either way.
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *args: Any,
        ledger: str | os.PathLike[str] | None = None,
        record: Iterable[str] = ALL_TABLES,
        record_every: int = 1,
        info_keys: Iterable[str] = (),
        overwrite: bool = False,
        background: bool = True,
        **kwargs: Any,
    ):
        record = tuple(record)
        unknown = [t for t in record if t not in ALL_TABLES]
        if unknown:
            raise ValueError(f"record: unknown tables {unknown}; choose from {list(ALL_TABLES)}")
        if not isinstance(record_every, int) or record_every < 1:
            raise ValueError(f"record_every: must be an integer >= 1, got {record_every!r}")
        if kwargs.get("rollout_buffer_class") is not None:
            raise ValueError(
                "rollout_buffer_class: InstrumentedPPO uses its own indexed rollout buffer; leave it unset"
            )
        self.record = record
        self.record_every = record_every
        self.info_keys = tuple(info_keys)
        schema.check_info_keys(self.info_keys)
        self._writer = LedgerWriter(ledger, self.info_keys, overwrite) if ledger is not None else None
        self._rollout = 0
        self._state_ids: np.ndarray | None = None
        self._info_state_ids = False
        self._started = False
        self._pending_episodes: list[dict[str, Any]] = []
        self._episodes: EpisodeTracker | None = None
        self._arrays: RolloutArrays | None = None
        self._geometry: SampleGeometry | None = None
        self.background = bool(background)
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: list[Future[None]] = []
        self._write_failed = False
        super().__init__(policy, env, *args, **kwargs)

    # ------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = (
                IndexedDictRolloutBuffer
                if isinstance(self.observation_space, spaces.Dict)
                else IndexedRolloutBuffer
            )
        super()._setup_model()
        if not isinstance(
            self.action_space, spaces.Discrete | spaces.Box | spaces.MultiDiscrete | spaces.MultiBinary
        ):
            raise UnsupportedPolicyError(f"action space {self.action_space} is not supported")
        if "samples" in self.record and self._writer is not None:
            self._geometry = SampleGeometry(self.policy, self.policy.optimizer, self.action_space)
            self._geometry.validate()

    def _excluded_save_params(self) -> list[str]:
        # the recording machinery is not part of the model: model.zip stays loadable with PPO.load
        return [
            *super()._excluded_save_params(),
            "_writer", "_geometry", "_arrays", "_episodes", "_state_ids", "_pending_episodes",
            "_run_info_cache", "_info_state_ids", "_started", "_executor", "_jobs", "_write_failed",
        ]  # fmt: skip

    @property
    def ledger_dir(self) -> str | None:
        return None if self._writer is None else str(self._writer.run_dir)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        reset_num_timesteps: bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        last_obs = self._last_obs
        out = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, *args, **kwargs)
        if self._episodes is None:
            self._episodes = EpisodeTracker(self.n_envs, self.info_keys)
        if self._last_obs is not last_obs or not self._started:
            self._episodes.abandon_running()
            self._state_ids = initial_state_ids(self.env)
            self._info_state_ids = self._state_ids is not None
            self._started = True
        if self._writer is not None:
            self._writer.open(self._run_info(total_timesteps))
        return out

    def learn(self, *args: Any, **kwargs: Any) -> InstrumentedPPO:
        """SB3's ``learn()``; returns once every trained rollout is in the ledger."""
        try:
            return super().learn(*args, **kwargs)
        finally:
            self.sync_ledger()

    def sync_ledger(self) -> None:
        """Wait until the background thread has written every rollout trained so far, and stop it.
        Raises the first error it met (after waiting for the rest)."""
        jobs, self._jobs = self._jobs, []
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for job in jobs:
            job.result()

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="rledger-ledger", initializer=_lower_priority
            )
        return self._executor.submit(fn)

    def _recording(self) -> bool:
        return self._writer is not None and self._rollout % self.record_every == 0

    # ------------------------------------------------------------------ collection
    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: Any, n_rollout_steps: int
    ) -> bool:
        """Collect experiences using the current policy and fill a ``RolloutBuffer`` (SB3's
        ``OnPolicyAlgorithm.collect_rollouts``, line for line, recording the env's dones, truncations
        and, where some env is done, its rewards before SB3 adds the timeout bootstrap to them)."""
        arrays = self._arrays = RolloutArrays(n_rollout_steps, env.num_envs, len(self.info_keys))
        complete = self._collect(env, callback, rollout_buffer, n_rollout_steps, arrays)
        # the rewards of every other step, as SB3 stored them
        arrays.fill_rewards(rollout_buffer.rewards, rollout_buffer.pos)
        if not complete and self._episodes is not None:
            # learn() stops without train(): keep episode counts right and its finished episodes
            _, rows = self._episodes.consume(self._rollout, arrays)
            self._pending_episodes.extend(rows)
        return complete

    def _collect(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: Any,
        n_rollout_steps: int,
        arrays: RolloutArrays,
    ) -> bool:
        assert self._last_obs is not None, "No previous observation was provided"
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)

        n_steps = 0
        rollout_buffer.reset()
        # Sample new weights for the state dependent exploration
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)

        callback.on_rollout_start()
        per_step_info = bool(self.info_keys) or self._info_state_ids

        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                # Sample a new noise matrix
                self.policy.reset_noise(env.num_envs)

            with th.no_grad():
                # Convert to pytorch tensor or to TensorDict
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs = self.policy(obs_tensor)
            actions = actions.cpu().numpy()

            # Rescale and perform action
            clipped_actions = actions

            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    # Unscale the actions to match env bounds
                    # if they were previously squashed (scaled in [-1, 1])
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    # Otherwise, clip the actions to avoid out of bound error
                    # as we are sampling from an unbounded Gaussian distribution
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)

            self.num_timesteps += env.num_envs

            # the env's step as it gave it (before the bootstrap below changes rewards in place);
            # count_nonzero, not dones.any(): the latter goes through Python-level numpy code, which
            # cost ~5 us per env step here (about 1% of learn() on CartPole)
            arrays.filled, arrays.last_rewards = n_steps + 1, rewards
            if np.count_nonzero(dones):
                arrays.record_done(n_steps, rewards, dones, infos)
            if per_step_info:
                self._record_info(n_steps, arrays, env, infos, dones)

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                # Reshape in case of discrete action
                actions = actions.reshape(-1, 1)

            # Handle timeout by bootstrapping with value function
            # see GitHub issue #633
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_value = self.policy.predict_values(terminal_obs)[0]  # type: ignore[arg-type]
                    rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        with th.no_grad():
            # Compute value for the last timestep
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True

    def _record_info(
        self, t: int, arrays: RolloutArrays, env: VecEnv, infos: list[dict[str, Any]], dones: np.ndarray
    ) -> None:
        """The named info keys of step ``t`` and the state ids of the observations it started from."""
        arrays.record_info(t, infos, self.info_keys)
        if self._info_state_ids:
            if arrays.state_id is None:
                arrays.state_id = np.zeros(arrays.reward.shape, dtype=np.int64)
            arrays.state_id[t] = self._state_ids
            self._state_ids = next_state_ids(env, infos, dones)

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        """Update policy using the currently gathered rollout buffer (SB3's PPO.train, recorded)."""
        recording = self._recording()
        assert self._episodes is not None and self._arrays is not None
        episode_ids, finished = self._episodes.consume(self._rollout, self._arrays)
        self._pending_episodes.extend(finished)
        geometry = self._geometry if recording and "samples" in self.record else None
        transitions = (
            self._transition_columns(episode_ids) if recording and "transitions" in self.record else None
        )
        update_rows: list[dict[str, Any]] = []
        grad_norms: list[th.Tensor] = []  # of the steps taken, their clip factors computed at the end
        self._raise_background_error()
        if geometry is not None:
            n_samples = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs
            opt_steps = self.n_epochs * -(-n_samples // self.batch_size)
            # the last train() of learn(): learn() waits for its columns, so hand them to the thread
            # in parts while training runs (each rollout otherwise goes in one piece, when its
            # train() ends: fewer, longer calls in the thread slow the next collection less)
            last = self.background and self.num_timesteps >= self._total_timesteps
            geometry.reset(
                self._fetch_samples,
                opt_steps,
                self.n_epochs,
                self._submit if self.background else None,
                flush_every=-(-opt_steps // LAST_TRAIN_PARTS) if last else None,
                max_grad_norm=self.max_grad_norm,
            )

        # forward hooks on the policy's layers, for the per-minibatch modes only
        hooks = (
            geometry.capture
            if geometry is not None and geometry.mode != "batched"
            else contextlib.nullcontext
        )

        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            for minibatch, rollout_data in enumerate(self.rollout_buffer.get(self.batch_size)):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                with hooks() as cap:
                    values, log_prob, entropy = self.policy.evaluate_actions(
                        rollout_data.observations, actions
                    )
                values = values.flatten()
                # Normalize advantage
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # ratio between old and new policy, should be one at the first iteration
                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                # clipped surrogate loss
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                # Logging
                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    # No clipping
                    values_pred = values
                else:
                    # Clip the difference between old and new value
                    # NOTE: this depends on the reward scaling
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                # Value loss using the TD(gae_lambda) target
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                # Entropy loss favor exploration
                if entropy is None:
                    # Approximate entropy when no analytical form
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)

                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                # Calculate approximate form of reverse KL Divergence for early stopping
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                update = {
                    "rollout": self._rollout,
                    "epoch": epoch,
                    "minibatch": minibatch,
                    "lr": float(self.policy.optimizer.param_groups[0]["lr"]),
                    "approx_kl": float(approx_kl_div),
                    "policy_loss": pg_losses[-1],
                    "value_loss": value_losses[-1],
                    "entropy_loss": entropy_losses[-1],
                    "clip_fraction": clip_fraction,
                    "batch_size": len(advantages),
                }

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    update_rows.append(
                        {
                            **update,
                            "opt_step": -1,
                            "grad_norm": np.nan,
                            "clip_coef": np.nan,
                            "stopped_early": True,
                        }
                    )
                    break

                pending = None
                if geometry is not None:
                    terms = LossTerms(
                        advantages, ratio, clip_range, values, rollout_data.old_values, rollout_data.returns,
                        clip_range_vf if self.clip_range_vf is not None else None, self.ent_coef, self.vf_coef,
                    )  # fmt: skip
                    pending = geometry.before_step(
                        cap, rollout_data.observations, actions, log_prob, entropy, values, terms
                    )

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

                grad_norms.append(grad_norm)
                update_rows.append(
                    {
                        **update,
                        "opt_step": _opt_step(self.policy.optimizer),
                        "grad_norm": np.nan,  # with clip_coef, for all steps at once after the loop
                        "clip_coef": np.nan,
                        "stopped_early": False,
                    }
                )
                if geometry is not None and pending is not None:
                    base = {
                        "rollout": self._rollout,
                        "epoch": epoch,
                        "minibatch": minibatch,
                        "t": rollout_data.t,
                        "env": rollout_data.env,
                    }
                    if not pending.batched:  # the batched mode has these in its buffers already
                        base.update(
                            advantage_used=advantages.detach(), ratio=ratio.detach(), clipped=pending.clipped
                        )
                    geometry.record(pending, self.policy.optimizer, grad_norm, base)

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        if grad_norms:
            norms = th.stack(grad_norms)
            norm_list, coef_list = norms.tolist(), clip_coefs(norms, self.max_grad_norm).tolist()
            taken = (row for row in update_rows if not row["stopped_early"])
            for row, norm, coef in zip(taken, norm_list, coef_list, strict=True):
                row["grad_norm"], row["clip_coef"] = norm, coef
            self.logger.record("train/grad_norm", float(np.mean(norm_list)))
            self.logger.record("train/clip_coef", float(np.mean(coef_list)))

        samples = geometry.finish() if geometry is not None else []
        self._write_rollout(recording, transitions, samples, update_rows)

    def _fetch_samples(self, t_env: np.ndarray) -> tuple[Any, th.Tensor]:
        """Observations and actions (as train() feeds them to the policy) of (t, env) pairs of the
        rollout in the buffer (which get() has flattened env-major)."""
        buf = self.rollout_buffer
        flat = t_env[:, 1] * buf.buffer_size + t_env[:, 0]
        if isinstance(buf.observations, dict):
            obs: Any = {k: buf.to_torch(v[flat]) for k, v in buf.observations.items()}
        else:
            obs = buf.to_torch(buf.observations[flat])
        actions = buf.to_torch(buf.actions[flat].astype(np.float32, copy=False))
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return obs, actions

    # ------------------------------------------------------------------ ledger output
    def _transition_columns(self, episode_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Transitions of the rollout just collected (read before get() flattens the buffer)."""
        buf = self.rollout_buffer
        a = self._arrays
        assert a is not None and not buf.generator_ready
        n_steps, n_envs = buf.buffer_size, buf.n_envs
        # column order: row = t * n_envs + env (time-major)
        t_idx, env_idx = np.meshgrid(np.arange(n_steps), np.arange(n_envs), indexing="ij")
        cols: dict[str, Any] = {
            "rollout": np.full(n_steps * n_envs, self._rollout, dtype=np.int32),
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

    def _write_rollout(
        self,
        recording: bool,
        transitions: dict[str, Any] | None,
        samples: list[Any],
        update_rows: list[dict[str, Any]],
    ) -> None:
        rollout = self._rollout
        self._rollout += 1
        writer = self._writer
        episodes, self._pending_episodes = self._pending_episodes, []
        if writer is None:
            return
        info = self._run_info(None)
        # Arrow tables are built here (the samples' in the background thread, which computes their
        # columns); the thread gets the Parquet encoding and files: few, long calls, since each of its
        # Python-level calls hands the GIL over and back and so slows training
        tables: list[tuple[str, Any]] = []
        if transitions is not None:
            # copies: some columns are views of the rollout buffer, which the next rollout refills
            cols = {k: np.array(v, copy=True) for k, v in transitions.items()}
            tables.append(("transitions", writer.arrow_table("transitions", cols)))
        if recording and "samples" in self.record:
            tables.append(
                ("samples", lambda: writer.arrow_table("samples", _sample_columns(combine(samples))))
            )
        if recording and "updates" in self.record:
            tables.append(
                ("updates", writer.arrow_table("updates", _rows_to_columns(update_rows, "updates", ())))
            )
        if "episodes" in self.record and episodes:
            cols = _rows_to_columns(episodes, "episodes", self.info_keys)
            tables.append(("episodes", writer.arrow_table("episodes", cols)))

        def write() -> None:
            if self._write_failed:  # a rollout before this one failed: write nothing after it
                return
            try:
                for table, tbl in tables:
                    writer.write_arrow(table, rollout, tbl() if callable(tbl) else tbl)
                writer.update_run_info(info)
            except BaseException:
                self._write_failed = True
                raise

        if self.background:
            self._jobs.append(self._submit(write))
        else:
            write()

    def _raise_background_error(self) -> None:
        """Surface an error of the background thread at the next train() (it stops the run)."""
        if any(job.done() and job.exception() is not None for job in self._jobs):
            self.sync_ledger()
        self._jobs = [job for job in self._jobs if not job.done()]

    def _run_info(self, total_timesteps: int | None) -> dict[str, Any]:
        prev: dict[str, Any] = getattr(self, "_run_info_cache", {})
        env_id = None
        try:
            env_id = self.env.get_attr("spec")[0].id if self.env is not None else None  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - envs without a spec
            env_id = None
        info = {
            "schema_version": schema.SCHEMA_VERSION,
            "tables": list(self.record),
            "record_every": self.record_every,
            "info_keys": list(self.info_keys),
            "seed": self.seed,
            "env_id": env_id,
            "n_envs": self.n_envs,
            "per_sample_path": self._geometry.path if self._geometry is not None else None,
            "config": ppo_config(self),
            "versions": prev.get("versions") or versions(),
            "git_commit": prev["git_commit"] if "git_commit" in prev else git_commit(),
            "rollouts_written": self._rollout,
            "num_timesteps": int(self.num_timesteps),
            "total_timesteps": total_timesteps
            if total_timesteps is not None
            else prev.get("total_timesteps"),
        }
        self._run_info_cache = info
        return info


def _lower_priority() -> None:
    """Run the background thread at a lower scheduling priority than training (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not permitted: keep the default
        pass


def _opt_step(optimizer: th.optim.Optimizer) -> int:
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                return int(state["step"])
    return -1


def _sample_columns(samples: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The samples table's columns with the schema's dtypes (empty when nothing was recorded)."""
    cols = schema.columns("samples")
    if samples is None:
        return {c.name: np.zeros(0, dtype=c.dtype.to_pandas_dtype()) for c in cols}
    return {c.name: samples[c.name].astype(c.dtype.to_pandas_dtype(), copy=False) for c in cols}


def _rows_to_columns(
    rows: list[dict[str, Any]], table: str, info_keys: tuple[str, ...]
) -> dict[str, np.ndarray]:
    sch = schema.arrow_schema(table, info_keys)
    return {f.name: np.array([r[f.name] for r in rows], dtype=f.type.to_pandas_dtype()) for f in sch}


def ppo_config(model: PPO) -> dict[str, Any]:
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
    return {
        "python": platform.python_version(),
        "torch": th.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "rledger": __version__,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
