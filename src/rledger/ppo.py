"""``InstrumentedPPO``: stable-baselines3's PPO with a ledger of every update, training unchanged.

``train()`` is SB3 2.9's ``PPO.train()`` and ``collect_rollouts()`` its
``OnPolicyAlgorithm.collect_rollouts()``, statement for statement and with SB3's own line breaks, plus
insertions marked ``# rledger``: calls to :class:`rledger.recorder.Recorder`, and ``clip_grad_norm_``'s
result kept (SB3 discards it). ``tests/test_sb3_mirror.py`` holds both against SB3's installed source.
The insertions read the autograd graph and the optimizer state but change no parameter, gradient,
optimizer state or random number, so the parameters after ``learn()`` are bitwise equal to plain PPO's
with the same seed (tested).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from rledger.buffers import IndexedDictRolloutBuffer, IndexedRolloutBuffer
from rledger.ledger import schema
from rledger.recorder import Recorder

ALL_TABLES = schema.DEFAULT_TABLES


class InstrumentedPPO(PPO):
    """PPO that writes a ledger of every sample of every minibatch of every epoch.

    Takes every argument of :class:`stable_baselines3.PPO`, plus:

    :param ledger: run directory to write the ledger to (``None``: record nothing).
    :param record: which tables to write, a subset of
        ``("transitions", "samples", "updates", "episodes", "momentum")``; default all but
        ``momentum``, the momentum-propagated attribution (:mod:`rledger.persample.momentum`), which
        needs ``samples``, ``record_every=1`` and Adam or AdamW with one parameter group.
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
    :param summaries: per-rollout summaries of the recorded samples to SB3's logger, so TensorBoard
        (``tensorboard_log``) shows them: ``ledger/r2_log_update_on_log_abs_advantage``,
        ``ledger/clipped_share``, ``ledger/self_reinforcement/action_<a>``
        (:mod:`rledger.ledger.summary`). Computed in the background thread, and written to SB3's
        TensorBoard output at the timesteps each rollout ended at, once its samples are written.
    :param permute_advantages: the advantage-permutation null, a different training (off by
        default, when training is bitwise SB3's): at the start of every ``train()``, after the ledger
        has read the rollout's transitions (whose ``advantage`` stays the GAE the env's rewards gave),
        the rollout's advantages are permuted across all its samples (steps x envs) by a generator of
        its own, seeded from ``seed``; their values stay, their link to the actions that earned them
        is cut. The value targets (``returns``) are not permuted, and neither SB3's random draws nor
        the minibatches change: a permuted run is paired with the real run of the same seed.
    :param momentum_horizon: with ``momentum`` recorded, the most optimizer steps counted per sample
        (the end of each ``learn()`` call bounds it too); default: until ``beta1^n <= 1e-9`` (197 steps
        at Adam's default ``beta1``). The buffer it needs grows with it.
    :param watch: (state, action) pairs to watch: each state an observation, or an integer state id
        for envs with ``observation_for(state_id)`` (rledger's gridworlds). Adds the ``influence``
        table (every sample's first-order effect on each watched log pi, fresh and through Adam's
        momentum) and ``influence_steps`` (per optimizer step: the watched log pi's actual change,
        its first-order prediction and the gap between them) to ``record``; needs ``momentum``.
        The influence table has (samples x watched pairs) rows: bound it with few pairs and
        ``influence_every``.
    :param influence_every: the influence tables cover every Nth rollout only.
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
        summaries: bool = True,
        permute_advantages: bool = False,
        momentum_horizon: int | None = None,
        watch: Iterable[tuple[Any, Any]] = (),
        influence_every: int = 1,
        **kwargs: Any,
    ):
        if kwargs.get("rollout_buffer_class") is not None:
            raise ValueError(
                "rollout_buffer_class: InstrumentedPPO uses its own indexed rollout buffer; leave it unset"
            )
        self.record, self.record_every, self.info_keys = tuple(record), record_every, tuple(info_keys)
        self.background, self.summaries = bool(background), bool(summaries)
        self.permute_advantages = bool(permute_advantages)
        self._permutation_rng: np.random.Generator | None = None
        self.momentum_horizon = momentum_horizon
        self.watch, self.influence_every = list(watch), influence_every
        if self.watch:
            self.record = (*self.record, *(t for t in schema.INFLUENCE_TABLES if t not in self.record))
        self._recorder = Recorder(
            ledger, self.record, record_every, self.info_keys, overwrite, self.background,
            summaries=self.summaries, momentum_horizon=momentum_horizon, watch=self.watch,
            influence_every=influence_every,
        )  # fmt: skip
        super().__init__(policy, env, *args, **kwargs)

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            self.rollout_buffer_class = (
                IndexedDictRolloutBuffer
                if isinstance(self.observation_space, spaces.Dict)
                else IndexedRolloutBuffer
            )
        super()._setup_model()
        self._recorder.setup_model(self)

    def _excluded_save_params(self) -> list[str]:
        # the recording machinery is not part of the model: model.zip stays loadable with PPO.load
        return [*super()._excluded_save_params(), "_recorder", "_permutation_rng"]

    def _permute_rollout_advantages(self) -> None:
        """The advantage-permutation null (``permute_advantages``); nothing when it is off."""
        if not self.permute_advantages:
            return
        if self._permutation_rng is None:
            self._permutation_rng = np.random.default_rng([0 if self.seed is None else self.seed, 0x9E3779B9])
        adv = self.rollout_buffer.advantages
        # a new array: the ledger's transitions hold a view of the old one (the GAE), copied later
        order = self._permutation_rng.permutation(adv.size)
        self.rollout_buffer.advantages = adv.reshape(-1)[order].reshape(adv.shape)

    @classmethod
    def load(  # type: ignore[override]
        cls,
        path: Any,
        env: Any = None,
        device: Any = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        *,
        ledger: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> InstrumentedPPO:
        """SB3's ``load()``; with ``ledger=``, the loaded model records into it from its next
        ``learn()`` (see :meth:`attach_ledger`): an existing ledger is continued, rollout numbering
        and episode numbers going on where it stopped. Call ``learn(..., reset_num_timesteps=False)``
        to continue the schedules too. A model.zip saved by plain PPO loads as well."""
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        if ledger is not None:
            model.attach_ledger(ledger)
        return model  # type: ignore[return-value]

    def attach_ledger(self, ledger: str | os.PathLike[str], rollouts: int | None = None) -> None:
        """Record into ``ledger`` (a ledger folder or a run folder holding one) from the next rollout on.

        A folder holding a ledger is continued: it must have been recorded with this model's
        ``record``, ``record_every`` and ``info_keys``, its first ``rollouts`` rollouts (default: all
        that its run.json counts) must be whole, and the rollouts after them are removed when the
        next ``learn()`` starts; numbering goes on from there, each env's episodes from its last
        episode number + 1 (an episode running when the model was saved is not continued: SB3's
        ``load`` resets the env). A missing or empty folder starts a new ledger. Nothing is written
        here."""
        from rledger.ledger.reader import continue_ledger

        folder, keep, first_episode = continue_ledger(
            ledger, self.record, self.record_every, self.info_keys, rollouts
        )
        recorder = Recorder(
            folder, self.record, self.record_every, self.info_keys, False, self.background,
            keep=keep, first_episode=first_episode, summaries=getattr(self, "summaries", True),
            momentum_horizon=getattr(self, "momentum_horizon", None), watch=getattr(self, "watch", ()),
            influence_every=getattr(self, "influence_every", 1),
        )  # fmt: skip
        recorder.setup_model(self)
        self._recorder.close()
        self._recorder = recorder

    @property
    def ledger_dir(self) -> str | None:
        sink = self._recorder.sink
        return None if sink is None else str(sink.run_dir)

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
        self._recorder.setup_learn(self, total_timesteps, env_reset=self._last_obs is not last_obs)
        return out

    def learn(self, *args: Any, **kwargs: Any) -> InstrumentedPPO:
        """SB3's ``learn()``; returns once every trained rollout is in the ledger."""
        try:
            super().learn(*args, **kwargs)
            self._recorder.end_learn()
        finally:
            self._recorder.close()
        self._recorder.log_remaining(self.logger, self.num_timesteps)
        return self

    def sync_ledger(self) -> None:
        """Wait until the background thread has written every rollout trained so far, and stop it.
        Raises the first error it met (after waiting for the rest)."""
        self._recorder.sync()

    # The two mirrors of SB3 below keep SB3's own formatting, so that a plain diff shows only the
    # insertions: ruff format leaves them alone.
    # fmt: off
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """
        Collect experiences using the current policy and fill a ``RolloutBuffer``.
        The term rollout here refers to the model-free notion and should not
        be used with the concept of rollout used in model-based RL or planning.

        :param env: The training environment
        :param callback: Callback that will be called at each step
            (and at the beginning and end of the rollout)
        :param rollout_buffer: Buffer to fill with rollouts
        :param n_rollout_steps: Number of experiences to collect per environment
        :return: True if function returned with at least `n_rollout_steps`
            collected, False if callback terminated rollout prematurely.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        # Switch to eval mode (this affects batch norm / dropout)
        self.policy.set_training_mode(False)

        n_steps = 0
        rollout_buffer.reset()
        # Sample new weights for the state dependent exploration
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)

        callback.on_rollout_start()
        self._recorder.start_rollout(n_rollout_steps, env.num_envs)  # rledger

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
            self._recorder.env_step(n_steps, env, rewards, dones, infos)  # rledger

            # Give access to local variables
            callback.update_locals(locals())
            if not callback.on_step():
                self._recorder.end_rollout(rollout_buffer, complete=False)  # rledger
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
        self._recorder.end_rollout(rollout_buffer, complete=True)  # rledger

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer.
        """
        self._recorder.start_train(self)  # rledger
        self._permute_rollout_advantages()  # rledger: the advantage-permutation null; off by default
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
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
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
                # see issue #417: https://github.com/DLR-RM/stable-baselines3/issues/417
                # and discussion in PR #419: https://github.com/DLR-RM/stable-baselines3/pull/419
                # and Schulman blog: http://joschu.net/blog/kl-approx.html
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                self._recorder.minibatch(  # rledger
                    epoch, approx_kl_div, pg_losses[-1], value_losses[-1], entropy_losses[-1], clip_fraction, len(advantages)
                )

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    self._recorder.stopped_early()  # rledger
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self._recorder.before_step(  # rledger
                    rollout_data, actions, log_prob, entropy, values, advantages, ratio, clip_range,
                    clip_range_vf if self.clip_range_vf is not None else None,
                )

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)  # rledger: kept
                self.policy.optimizer.step()
                self._recorder.after_step(grad_norm)  # rledger

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

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
        self._recorder.end_train(self.logger)  # rledger
    # fmt: on
