"""One run into one folder: ``<out>/<experiment>/<variant>/seed=<k>/``.

The folder holds ``config.yaml`` (the resolved configuration), ``command.txt``, ``run.json``
(versions, git commit, timings), ``model.zip`` (loadable with ``PPO.load``, which unpickles),
``policy.npz`` (the trained policy's parameters, read without unpickling by :func:`load_model`),
``ledger/`` (the Parquet tables), ``eval.json`` (evaluation episodes), ``initial_policy.npz`` (the
policy's parameters before training),
``tensorboard/`` and, written last, ``DONE``. A run is
complete exactly when ``DONE`` exists. Every file is written whole or not at all. A run that raised an
error keeps its traceback in ``error.txt`` (removed when the run later completes).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from rledger.experiments import checkpoint
from rledger.experiments.spec import SpecError
from rledger.ledger.writer import atomic_write_bytes, atomic_write_json

DONE = "DONE"
ERROR = "error.txt"
INITIAL_POLICY = "initial_policy.npz"
POLICY = "policy.npz"


def save_parameters(module: Any, path: Path) -> None:
    """A torch module's parameters and buffers (``state_dict``) as an ``.npz`` archive, written whole
    or not at all; read back with :func:`load_parameters` (no pickle involved)."""
    import io

    import numpy as np

    arrays = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_parameters(path: Path) -> dict[str, Any]:
    """The arrays :func:`save_parameters` wrote, by state_dict key."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class UntrustedModel(ValueError):
    """A run's model can be loaded only by unpickling, and the caller did not say it trusts it."""


def read_config(path: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml``, parsed safely; an unreadable file is a ValueError naming it."""
    file = path / "config.yaml"
    try:
        config = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: not a run's YAML config ({type(exc).__name__}); rerun the run") from None
    if not isinstance(config, dict) or not isinstance(config.get("env"), dict):
        raise ValueError(f"{file}: not a run's config (no env section); rerun the run")
    return config


def watch_pairs(env_id: str, env_kwargs: dict[str, Any], watch: Any) -> list[tuple[int, int]]:
    """``record.watch`` as (state id, action) pairs: listed, or a named set (``boat_race_arrows``:
    each arrow tile's continue and turn-back actions, in :func:`arrow_tiles` order)."""
    if watch == "boat_race_arrows":
        import gymnasium as gym

        from rledger.envs.boat_race import arrow_tiles

        env = gym.make(env_id, **env_kwargs)
        try:
            return [(t.state_id, a) for t in arrow_tiles(env) for a in (t.continue_action, t.back_action)]
        finally:
            env.close()
    return [(int(s), int(a)) for s, a in watch]


def load_model(path: Path, trust_pickles: bool = False) -> Any:
    """The trained SB3 PPO model of the run folder ``path``, for evaluation (``predict``, ``policy``).

    Rebuilt from the run's ``config.yaml`` (parsed safely) with the weights of ``policy.npz`` (read
    without unpickling): nothing in the folder can run code. A run without ``policy.npz`` (written by
    an rledger before it) is loaded from ``model.zip`` with ``PPO.load`` only when ``trust_pickles``:
    unpickling runs whatever code a crafted file holds."""
    import torch as th
    from stable_baselines3 import PPO

    from rledger.experiments.environment import make_vec
    from rledger.experiments.spec import policy_class, ppo_kwargs

    path = Path(path)
    weights = path / POLICY
    if not weights.is_file():
        if trust_pickles:
            return PPO.load(path / "model.zip", device="cpu")
        raise UntrustedModel(
            f"{path}: no {POLICY} (a run written before rledger saved one), and loading its model.zip "
            "unpickles it, which runs any code the file holds; pass --trust-pickles "
            "(trust_pickles=True) if you trust whoever made it, or rerun the run"
        )
    config = read_config(path)
    env = make_vec(config, config["env"]["kwargs"], n_envs=config.get("n_envs", 1), seed=None)
    model = PPO(policy_class(config), env, device="cpu", **ppo_kwargs(config))
    try:
        params = load_parameters(weights)
        model.policy.load_state_dict({k: th.as_tensor(v) for k, v in params.items()})
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{weights}: not this run's policy weights ({first}); rerun the run") from None
    return model


def run_dir(out: str | os.PathLike[str], experiment: str, variant: str, seed: int) -> Path:
    """``<out>/<experiment>/<variant>/seed=<seed>``; refuses names that would lead outside ``out``."""
    from rledger.experiments.spec import SpecError, is_name

    for what, name in (("experiment", experiment), ("variant", variant)):
        if not is_name(name):
            raise SpecError(
                f"{what} name {name!r}: must be one path component (letters, digits, '_', '.', '-')"
            )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError(f"seed {seed!r}: must be an integer >= 0")
    return Path(out) / experiment / variant / f"seed={seed}"


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def read_done(path: Path) -> dict[str, Any]:
    """A complete run's summary (its ``DONE`` file); an unreadable one is a ValueError naming it."""
    file = path / DONE
    try:
        done = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        done = None
    if not isinstance(done, dict):
        raise ValueError(
            f"{file}: not a run's completion record; delete the run folder {path} (or pass --overwrite) "
            "to rerun it"
        )
    return done


# config keys that change how a run is carried out, not what it computes: a complete run whose config
# differs only in them is the same run
RUNNER_KEYS = ("checkpoint_every",)


def _identity(config: dict[str, Any]) -> str:
    return dump_config({k: v for k, v in config.items() if k not in RUNNER_KEYS})


def same_config(path: Path, config: dict[str, Any]) -> bool:
    """Whether the run folder's ``config.yaml`` is ``config`` (up to :data:`RUNNER_KEYS`)."""
    try:
        stored = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(stored, dict) and _identity(stored) == _identity(config)


def status(path: Path, config: dict[str, Any]) -> str:
    """``"new"``, ``"done"`` (complete, same config), ``"conflict"`` (complete, other config),
    ``"broken"`` (a DONE marker that is not one) or ``"partial"`` (started, never finished)."""
    if not path.exists():
        return "new"
    if (path / DONE).is_file():
        try:
            read_done(path)
        except ValueError:
            return "broken"
        return "done" if same_config(path, config) else "conflict"
    return "partial"


class RunLocked(RuntimeError):
    """Another live process is writing this run folder."""


class RunsFailed(RuntimeError):
    """Runs of an experiment raised errors while the others went on to complete; the message has one
    line per failed run (its error, and where its traceback is kept)."""


def _lock_owner(lock: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(lock.read_text())
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner runs: checked for a process on this host; one on another host (a Ray
    worker on a shared filesystem) cannot be checked and counts as alive."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(owner["pid"])


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended but not been reaped (a killed runner's orphaned worker, where the
    container's init does not reap): ``kill(pid, 0)`` still succeeds on it. Linux only (``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One writer per run folder: ``<run>.lock`` beside it holds the writer's pid and host, created
    exclusively. A lock whose process has died (on this host) is taken over; a live one raises
    :class:`RunLocked`. A lock file without a readable owner (its writer died between creating and
    filling it) is stale after 10 s."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            owner = _lock_owner(lock)
            try:
                young = time.time() - lock.stat().st_mtime < 10
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if (owner is not None and _alive(owner)) or (owner is None and young):
                who = f"pid {owner['pid']} on {owner['host']}" if owner else "a process that is starting"
                raise RunLocked(
                    f"{path}: another runner ({who}) is writing this run; wait for it to finish or stop it "
                    f"(if it is gone, delete {lock})"
                ) from None
            try:  # stale: move it out of the way atomically, so that only one taker succeeds
                lock.rename(lock.with_name(f"{lock.name}.stale-{os.getpid()}-{time.time_ns()}"))
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise RunLocked(f"{path}: could not take the run's lock {lock}; try again")
    for stale in lock.parent.glob(f"{lock.name}.stale-*"):
        stale.unlink(missing_ok=True)
    try:
        yield
    finally:
        if (_lock_owner(lock) or {}).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def move_aside(path: Path) -> Path:
    """Move an interrupted run's folder aside (never mixed into a new run); returns where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.partial-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.partial-{stamp}-{n}")
        n += 1
    path.rename(dest)
    from rledger.ledger.writer import remove_temp_files

    remove_temp_files(dest)  # an interrupted write's leftovers
    return dest


def execute(
    config: dict[str, Any], path: Path, command: str, overwrite: bool = False, track: str | None = None
) -> dict[str, Any]:
    """Train, save, evaluate and mark one run complete, holding the run's lock (:func:`run_lock`).
    Returns the run's summary. ``track``: a Weights & Biases project to stream the run's TensorBoard
    scalars to (:func:`tracking`)."""
    with run_lock(path), tracking(track, config, path):
        try:
            result = _execute(config, path, command, overwrite)
        except (SpecError, FileExistsError):  # bad input: the message says what to fix
            raise
        except Exception:
            keep_traceback(path)
            raise
        (path / ERROR).unlink(missing_ok=True)  # an earlier attempt's, now resumed to the end
        return result


def keep_traceback(path: Path) -> None:
    """Write the exception being handled, with its traceback, to ``<run>/error.txt`` (when the run's
    folder exists: nothing is created for it)."""
    import traceback

    if path.is_dir():
        with contextlib.suppress(OSError):  # a full disk must not hide the error itself
            atomic_write_bytes(path / ERROR, traceback.format_exc().encode())


def failure_line(path: Path, exc: BaseException) -> str:
    """One line for a failed run: its folder, the error, and where its traceback is."""
    msg = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__
    where = f" (traceback: {path / ERROR})" if (path / ERROR).is_file() else ""
    return f"{path}: {what}{where}"


@contextlib.contextmanager
def tracking(project: str | None, config: dict[str, Any], path: Path) -> Iterator[None]:
    """With a project name: a W&B run (``wandb.init(sync_tensorboard=True)``, as CleanRL and rl-zoo
    do it) named ``<experiment>/<variant>/seed=<k>``, grouped by experiment and variant, holding the
    run's config; it mirrors the TensorBoard scalars (SB3's and the ledger's summaries) and ends with
    the run. ``wandb`` is imported only here."""
    if project is None:
        yield
        return
    import wandb

    run = wandb.init(
        project=project,
        name=f"{config['experiment']}/{config['variant']}/seed={config['seed']}",
        group=f"{config['experiment']}/{config['variant']}",
        config=config,
        sync_tensorboard=True,
        dir=str(path.parent),
    )
    try:
        yield
    finally:
        run.finish()


def _execute(config: dict[str, Any], path: Path, command: str, overwrite: bool) -> dict[str, Any]:
    import torch as th

    from rledger.envs.wrappers import AffineReward
    from rledger.experiments import environment
    from rledger.experiments.spec import policy_class, ppo_kwargs
    from rledger.ppo import InstrumentedPPO

    th.set_num_threads(1)
    state = status(path, config)
    if state == "done" and not overwrite:
        return read_done(path)
    if state == "conflict" and not overwrite:
        raise FileExistsError(f"{path}: a complete run with another config; pass --overwrite to replace it")
    if state == "broken" and not overwrite:
        read_done(path)  # raises, naming the file
    resumed = None
    if state == "partial" and not overwrite and same_config(path, config):
        resumed = checkpoint.read(path)  # None: no usable checkpoint, the run starts over
        if resumed is not None and not checkpoint.ledger_continues(path / "ledger", config, resumed):
            resumed = None
    if state in ("done", "conflict", "broken"):
        shutil.rmtree(path)
    elif state == "partial" and resumed is None:
        move_aside(path)
    if resumed is None:
        path.mkdir(parents=True)
        atomic_write_bytes(path / "config.yaml", dump_config(config).encode())
        atomic_write_bytes(path / "command.txt", (command + "\n").encode())
    else:
        with open(path / "command.txt", "a") as fh:  # the resuming command, after the first
            fh.write(command + "\n")
    t0 = time.time()
    opening = config.get("opening")
    reward = config.get("reward")  # training's reward mapped to scale * r + offset
    wrapper = (
        functools.partial(AffineReward, scale=reward["scale"], offset=reward["offset"]) if reward else None
    )
    env = environment.make_vec(
        config,
        opening["env_kwargs"] if opening else config["env"]["kwargs"],
        n_envs=config["n_envs"],
        seed=config["seed"],
        reward_wrapper=wrapper,
    )
    model = InstrumentedPPO(
        policy_class(config),
        env,
        seed=config["seed"],
        ledger=path / "ledger" if resumed is None else None,
        record=config["record"]["tables"],
        record_every=config["record"]["every"],
        info_keys=tuple(config["record"]["info_keys"]),
        tensorboard_log=str(path / "tensorboard"),
        device=config.get("device", "cpu"),
        permute_advantages=bool(config.get("permute_advantages", False)),
        momentum_horizon=config["record"].get("momentum_horizon"),
        watch=watch_pairs(config["env"]["id"], config["env"]["kwargs"], config["record"].get("watch", [])),
        influence_every=config["record"].get("influence_every", 1),
        **ppo_kwargs(config),
    )
    every = config.get("checkpoint_every", 0)
    if resumed is not None:  # the ledger cut back to the checkpoint, then its state
        model.attach_ledger(path / "ledger", rollouts=resumed["rollouts"])
        checkpoint.resume(model, resumed)
    else:
        if config.get("zero_critic"):  # the value head starts at zero (and stays there with vf_coef 0)
            with th.no_grad():
                model.policy.value_net.weight.zero_()
                model.policy.value_net.bias.zero_()
        # the policy's parameters before any update (the probes' trained-input gate compares against them)
        save_parameters(model.policy, path / INITIAL_POLICY)
    phase = resumed["phase"] if resumed is not None else 0
    skip = resumed["rollouts"] if resumed is not None else None
    progress = _Progress(path / "progress.json", config["total_timesteps"])
    total = config["total_timesteps"]
    if opening and phase == 0:
        # the opening variant first, under the full run's schedules (learning rate, clip range) ...
        model.learn(
            total - model.num_timesteps,
            callback=CallbackList(
                [progress, _StopAt(opening["timesteps"]), checkpoint.Checkpointer(path, every, 0, skip)]
            ),
            reset_num_timesteps=resumed is None,
            tb_log_name="ppo",
        )
        phase, skip = 1, None
        # ... then the run's own variant, continuing the same model and ledger (and normalization)
        new_env = environment.make_vec(
            config, config["env"]["kwargs"], n_envs=config["n_envs"], seed=config["seed"] + 100_003,
            reward_wrapper=wrapper,
        )  # fmt: skip
        environment.carry_normalize(model.get_env(), new_env)
        model.set_env(new_env)
    if phase == 1 or resumed is not None:  # continuing: the same schedules, no env reset
        model.learn(
            total - model.num_timesteps,
            callback=CallbackList([progress, checkpoint.Checkpointer(path, every, phase, skip)]),
            reset_num_timesteps=False,
            tb_log_name="ppo",
        )
    else:
        model.learn(
            total,
            callback=CallbackList([progress, checkpoint.Checkpointer(path, every, 0)]),
            tb_log_name="ppo",
        )
    import io

    from rledger.ledger import Ledger

    buf = io.BytesIO()
    model.save(buf)
    atomic_write_bytes(path / "model.zip", buf.getvalue())
    save_parameters(model.policy, path / POLICY)  # the same weights, loadable without unpickling
    environment.save_normalize(model.get_env(), path / environment.VEC_NORMALIZE)
    evaluation = evaluate(model, config, path)
    atomic_write_json(path / "eval.json", evaluation)
    run_info = json.loads((path / "ledger" / "run.json").read_text())
    run_info.update(
        experiment=config["experiment"], variant=config["variant"], seconds=round(time.time() - t0, 2)
    )
    atomic_write_json(path / "run.json", run_info)
    summary = {
        "experiment": config["experiment"],
        "variant": config["variant"],
        "seed": config["seed"],
        "timesteps": int(model.num_timesteps),
        "seconds": run_info["seconds"],
        "eval": {v: e["summary"] for v, e in evaluation.items()},
    }
    (path / "progress.json").unlink(missing_ok=True)
    Ledger(path / "ledger").check()  # every rollout whole in every table, or no DONE
    atomic_write_json(path / DONE, summary)  # last: the run is complete
    (path / checkpoint.CHECKPOINT).unlink(missing_ok=True)
    return summary


def evaluate(model: Any, config: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Episodes of the trained policy on each evaluation variant: return, length, hidden performance,
    and the sum of every numeric info flag. Episode ``i`` of seed ``s`` resets with seed
    ``1_000_000 + 1000 * s + i``. With VecNormalize or frame stacking the episodes run through the
    run's vector wrappers (the normalization's statistics from ``path``, frozen; rewards as the env
    gives them)."""
    import numpy as np

    from rledger.envs.episode import play
    from rledger.experiments import environment

    out: dict[str, Any] = {}
    n = config["eval"]["episodes"]
    deterministic = config["eval"]["deterministic"]
    vector = environment.vector_wrapped(config["env"])

    def act(obs: Any, info: dict[str, Any], t: int) -> Any:
        return model.predict(obs, deterministic=deterministic)[0]

    def row(i: int, rewards: list[float], infos: list[dict[str, Any]], terminated: bool) -> dict[str, Any]:
        sums: dict[str, float] = {}
        for info in infos:
            for k, v in info.items():
                if isinstance(v, bool | int | float | np.bool_ | np.integer | np.floating) and k not in (
                    "state_id", "TimeLimit.truncated",
                ):  # fmt: skip
                    sums[k] = sums.get(k, 0.0) + float(v)
        return {"episode": i, "return": sum(rewards, 0.0), "length": len(rewards), **sums,
                "terminated": terminated}  # fmt: skip

    for variant, kwargs in config["eval"]["variants"].items():
        episodes = []
        if vector:
            venv = environment.make_vec(config, kwargs, n_envs=1, seed=None, training=False)
            stats = None if path is None else path / environment.VEC_NORMALIZE
            if stats is not None and stats.is_file():
                environment.load_normalize(venv, stats)
            for i in range(n):
                venv.seed(1_000_000 + 1000 * config["seed"] + i)
                obs = venv.reset()
                rewards, infos = [], []
                while True:
                    obs, r, done, info = venv.step(model.predict(obs, deterministic=deterministic)[0])
                    rewards.append(float(r[0]))
                    infos.append(info[0])
                    if done[0]:
                        break
                episodes.append(row(i, rewards, infos, not info[0].get("TimeLimit.truncated", False)))
            venv.close()
        else:
            env = environment.make_env(config["env"], kwargs)
            for i in range(n):
                ep = play(env, act, 1_000_000 + 1000 * config["seed"] + i)
                episodes.append(row(i, ep.rewards, ep.infos, ep.terminated))
            env.close()
        keys = sorted({k for e in episodes for k in e} - {"episode"})
        summary = (
            {k: float(np.mean([float(e.get(k, 0.0)) for e in episodes])) for k in keys} if episodes else {}
        )
        out[variant] = {"episodes": episodes, "summary": summary}
    return out


class _Progress(BaseCallback):
    """Writes ``progress.json`` (timesteps done / total) after every rollout, for the progress display."""

    def __init__(self, path: Path, total: int):
        super().__init__()
        self.path, self.total = path, total

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        atomic_write_json(self.path, {"timesteps": int(self.num_timesteps), "total": self.total})


class _StopAt(BaseCallback):
    """Stops learn() at the first step of the first rollout that would start at or after ``steps``
    (that one step is discarded with its rollout); every completed rollout has been trained on."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.rollout_start = steps, 0

    def _on_rollout_start(self) -> None:
        self.rollout_start = self.num_timesteps

    def _on_step(self) -> bool:
        return self.rollout_start < self.steps


def command_line() -> str:
    return " ".join(["rledger", *sys.argv[1:]])
