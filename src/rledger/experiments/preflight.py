"""Checks that need the env itself, run before anything is written: every variant's env is made
(its id, its dependencies, its keyword arguments), each trained one is stepped once (the info keys to
record must be there), and the memory a rollout needs is compared with what the machine has."""

from __future__ import annotations

from typing import Any

from rledger.experiments.environment import first_line
from rledger.experiments.spec import Spec, SpecError

# bytes per step beside the observations: the rollout buffer's floats, a transitions row, and per
# epoch a samples row with its slot buffers (measured rows are 45-55 B on disk, ~150 B in memory)
_STEP_BYTES = 256
_SAMPLE_BYTES = 256


def variants_used(spec: Spec) -> list[str]:
    """Every variant the spec trains on, evaluates on or probes, in order, once."""
    used = list(spec.train) + list(spec.eval.variants)
    if spec.opening is not None:
        used.append(spec.opening[0])
    for probe in spec.probes.values():
        used += [c for c in probe.conditions if c]
        if probe.competence is not None:
            used.append(probe.competence.condition)
    return list(dict.fromkeys(used))


def make_env(spec: Spec, variant: str) -> Any:
    """The variant's env (with the spec's imports and wrappers), or a :class:`SpecError` naming the
    field that made it fail."""
    import gymnasium as gym

    from rledger.experiments.environment import EnvConfigError
    from rledger.experiments.environment import make_env as build

    kwargs = spec.env_kwargs_for(variant)
    where = f"variants.{variant}" if spec.variants.get(variant) else "env.kwargs"
    try:
        return build({"id": spec.env_id, **spec.env_options}, kwargs)
    except EnvConfigError as exc:
        raise SpecError(str(exc)) from None
    except gym.error.DependencyNotInstalled as exc:
        raise SpecError(
            f"env.id: {spec.env_id} needs a package that is not installed ({first_line(exc)})"
        ) from None
    except gym.error.Error as exc:
        raise SpecError(f"env.id: {spec.env_id} cannot be made ({first_line(exc)})") from None
    except Exception as exc:  # the env's own constructor: any error is the kwargs' or the env's
        raise SpecError(
            f"{where}: {spec.env_id} cannot be made with {kwargs} ({first_line(exc)}); fix the keyword "
            "arguments"
        ) from None


def check_policy(spec: Spec, variant: str) -> None:
    """Build the run's VecEnv (VecNormalize, frame stacking) and its PPO policy once: a policy class
    or policy_kwargs that SB3 rejects is a :class:`SpecError` naming the field."""
    from stable_baselines3 import PPO

    from rledger.experiments.environment import EnvConfigError, make_vec
    from rledger.experiments.spec import policy_class, ppo_kwargs

    config = spec.run_config(variant, 0)
    try:
        venv = make_vec(config, config["env"]["kwargs"], n_envs=1, seed=0)
    except EnvConfigError as exc:
        raise SpecError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - VecNormalize / VecFrameStack rejecting the env
        field = "env.vec_normalize" if spec.env_options.get("vec_normalize") else "env.frame_stack"
        raise SpecError(f"{field}: cannot be applied to {spec.env_id} ({first_line(exc)})") from None
    try:
        PPO(policy_class(config), venv, device="cpu", **ppo_kwargs(config))
    except Exception as exc:  # noqa: BLE001 - SB3 rejects the policy or its kwargs
        field = "ppo.policy_kwargs" if config["ppo"].get("policy_kwargs") else "policy"
        raise SpecError(
            f"{field}: SB3 cannot build the policy {config['policy']!r} for {spec.env_id} ({first_line(exc)})"
        ) from None
    finally:
        venv.close()


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rollout_bytes(steps: int, n_epochs: int, obs_bytes: int) -> int:
    """An estimate of the memory one rollout of ``steps`` steps takes: its observations (kept twice:
    the buffer and the per-sample replay) and per step the buffer's and the ledger's rows."""
    return steps * (2 * obs_bytes + _STEP_BYTES + n_epochs * _SAMPLE_BYTES)


def _obs_bytes(space: Any) -> int:
    import gymnasium as gym
    import numpy as np

    if isinstance(space, gym.spaces.Dict):
        return sum(_obs_bytes(s) for s in space.spaces.values())
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape)) * max(4, space.dtype.itemsize)
    return int(gym.spaces.flatdim(space)) * 4


def check_envs(spec: Spec) -> None:
    """Make every variant's env the spec uses, step each trained one once and check its info keys, and
    refuse a rollout that cannot fit in memory; raises :class:`SpecError` with one line."""
    available = _available_memory()
    for variant in variants_used(spec):
        env = make_env(spec, variant)
        try:
            if variant not in spec.train:
                continue
            ppo = spec.run_config(variant, 0)["ppo"]
            rollout = int(ppo.get("n_steps", 2048)) * spec.n_envs
            batch = int(ppo.get("batch_size", 64))
            if batch > rollout:
                raise SpecError(
                    f"ppo.batch_size: {batch} is larger than a rollout (n_steps x n_envs = {rollout}); "
                    "lower it or raise ppo.n_steps"
                )
            need = rollout_bytes(rollout, int(ppo.get("n_epochs", 10)), _obs_bytes(env.observation_space))
            if available is not None and need > available:
                raise SpecError(
                    f"ppo.n_steps: a rollout of n_steps x n_envs = {rollout:,} steps needs about "
                    f"{need / 1e9:,.1f} GB (buffer, replay and ledger rows), more than the "
                    f"{available / 1e9:.1f} GB available; lower ppo.n_steps or n_envs"
                )
            if variant == spec.train[0] and (
                spec.env_options or spec.policy != "MlpPolicy" or spec.ppo.get("policy_kwargs")
            ):
                check_policy(spec, variant)
            if spec.record.info_keys:
                _check_info_keys(spec, variant, env)
            if spec.record.watch:
                _check_watch(spec, variant, env)
        finally:
            env.close()
    if spec.probes:
        check_probe_metrics(spec)


def check_probe_metrics(spec: Spec) -> None:
    """Each probe's metric (and its competence check's) must be one its conditions' episodes give:
    one episode of a random policy on each condition says which they give."""
    from rledger.probes.evaluate import run_episodes
    from rledger.probes.policies import RandomPolicy

    for probe in spec.probes.values():
        checks = [(c, probe.metric, f"probes.{probe.name}.metric") for c in probe.conditions if c]
        if probe.competence is not None:
            checks.append(
                (
                    probe.competence.condition,
                    probe.competence.metric,
                    f"probes.{probe.name}.competence.metric",
                )
            )
        for condition, metric, where in checks:
            env = make_env(spec, condition)
            n_actions = int(getattr(env.action_space, "n", 4))
            env.close()
            eps = run_episodes(spec.env_id, spec.env_kwargs_for(condition), RandomPolicy(n_actions), 1, 0)
            available = sorted(set(eps.columns) - {"seed", "episode"})
            if metric not in available:
                raise SpecError(
                    f"{where}: {metric!r} is not an evaluation metric of {spec.env_id}; available: "
                    f"{', '.join(available)}"
                )


def _check_info_keys(spec: Spec, variant: str, env: Any) -> None:
    try:
        env.reset(seed=0)
        info = env.step(env.action_space.sample())[4]
    except Exception as exc:
        raise SpecError(f"env.id: {spec.env_id} fails on its first step ({first_line(exc)})") from None
    added = {"raw_reward"} if spec.env_options.get("vec_normalize") else set()  # rledger's own wrapper
    missing = [k for k in spec.record.info_keys if k not in info and k not in added]
    if missing:
        raise SpecError(
            f"record.info_keys: {spec.env_id} ({variant}) gives no info key {missing[0]!r}; its info "
            f"holds {sorted(info)}: record only keys it gives on every step"
        )
    bad = [k for k in spec.record.info_keys if k in info and not _scalar(info[k])]
    if bad:
        raise SpecError(
            f"record.info_keys: info[{bad[0]!r}] of {spec.env_id} is {info[bad[0]]!r}, not a number; "
            "record only numeric (or true/false) keys"
        )


def _check_watch(spec: Spec, variant: str, env: Any) -> None:
    """The watched pairs name states the env can show and actions it has."""
    from rledger.experiments.run import watch_pairs

    kwargs = spec.env_kwargs_for(variant)
    try:
        pairs = watch_pairs(spec.env_id, kwargs, spec.record.watch)
    except Exception as exc:  # noqa: BLE001 - a named set this env does not have
        raise SpecError(
            f"record.watch: {spec.record.watch!r} does not apply to {spec.env_id}: {first_line(exc)}"
        ) from None
    if not pairs:
        raise SpecError(f"record.watch: {spec.record.watch!r} names no (state, action) pair on {spec.env_id}")
    base = env.unwrapped
    if not hasattr(base, "observation_for"):
        raise SpecError(
            f"record.watch: {spec.env_id} has no observation_for(state_id), so states cannot be named by id"
        )
    for i, (state, action) in enumerate(pairs):
        try:
            base.observation_for(state)
        except ValueError as exc:
            raise SpecError(f"record.watch[{i}]: {exc}") from None
        if not env.action_space.contains(action):
            raise SpecError(f"record.watch[{i}]: action {action} is not in {env.action_space}")


def _scalar(v: Any) -> bool:
    import numpy as np

    return isinstance(v, bool | int | float | np.bool_ | np.integer | np.floating) or (
        isinstance(v, np.ndarray) and v.shape == ()
    )
