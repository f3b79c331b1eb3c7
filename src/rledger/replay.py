"""Watching episodes: a policy's episodes rendered to animated GIF (and MP4 where ffmpeg exists).

:func:`replay_run` replays a run's evaluation episodes (the env variants, episode seeds and greedy or
sampled actions of ``rledger run``'s evaluation, :func:`rledger.experiments.run.evaluate`), from the
env's ``rgb_array`` frames. :func:`probe_clips` gives the report one short clip per probe policy and
condition, on the probe's own first episode seed. Files are written whole or not at all.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rledger.ledger.writer import atomic_write_bytes


class ReplayError(ValueError):
    """Bad input to a replay (a run that cannot be replayed, an env that cannot render); one line."""


def make_render_env(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """``gym.make(env_id, render_mode="rgb_array", **kwargs)``, or a :class:`ReplayError` saying why
    the env cannot give frames."""
    import rledger.envs  # noqa: F401  (registers the rledger/ ids)

    try:
        env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to make a rendering env is the user's to fix
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReplayError(
            f"{env_id}: cannot be made with render_mode='rgb_array' ({first}); install what its "
            "renderer needs (e.g. pygame for gymnasium's classic control envs)"
        ) from None
    return env


def episode_frames(env: gym.Env, policy: Any, seed: int, max_frames: int | None = None) -> list[np.ndarray]:
    """The frames of one episode of ``policy`` (``reset(seed)``, ``act(obs, info, t)``): the first
    observation's, then one per step; at most ``max_frames`` (the episode is cut there)."""
    policy.reset(seed)  # before the env's reset, as the probes' episodes
    obs, info = env.reset(seed=seed)
    frames = [_frame(env)]
    t = 0
    while max_frames is None or len(frames) < max_frames:
        obs, _, term, trunc, info = env.step(policy.act(obs, info, t))
        frames.append(_frame(env))
        t += 1
        if term or trunc:
            break
    return frames


def _frame(env: gym.Env) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        spec = getattr(env, "spec", None)
        raise ReplayError(
            f"{spec.id if spec else env}: render() gave no RGB frame (an array of height x width x 3); "
            "the env needs an rgb_array render mode"
        )
    return np.ascontiguousarray(frame, dtype=np.uint8)


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 4.0, scale: int = 1) -> bytes:
    """An animated GIF of ``frames`` (looping, ``fps`` frames per second, each pixel ``scale`` x
    ``scale``), with Pillow."""
    from PIL import Image

    if not frames:
        raise ReplayError("no frames to write")
    images = [
        Image.fromarray(np.kron(f, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else f)
        for f in frames
    ]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
        loop=0, disposal=1,
    )  # fmt: skip
    return buf.getvalue()


def write_gif(frames: Sequence[np.ndarray], path: Path, fps: float = 4.0, scale: int = 1) -> Path:
    atomic_write_bytes(path, gif_bytes(frames, fps, scale))
    return path


def write_mp4(frames: Sequence[np.ndarray], path: Path, fps: float = 4.0) -> Path | None:
    """An H.264 MP4 of ``frames`` through the ``ffmpeg`` program, or None where there is none."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or not frames:
        return None
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        target = Path(tmp) / "clip.mp4"
        cmd = [ffmpeg, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", str(fps), "-i", "-", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p",
               "-c:v", "libx264", str(target)]  # fmt: skip
        proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), capture_output=True)
        if proc.returncode != 0:
            raise ReplayError(f"{path}: ffmpeg failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
        atomic_write_bytes(path, target.read_bytes())
    return path


def replay_run(
    run: Path,
    out: Path | None = None,
    episodes: int = 1,
    variant: str | None = None,
    fps: float = 4.0,
    scale: int = 2,
    trust_pickles: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """GIFs (and MP4s where ffmpeg exists) of the first ``episodes`` evaluation episodes of the run
    folder ``run`` on its evaluation variant ``variant`` (default: every one), into ``out`` (default
    ``run/replay``) as ``<variant>-episode<i>.gif``. Nothing is written before every check passed; an
    existing clip is replaced only with ``overwrite``."""
    from rledger.experiments.run import DONE, UntrustedModel, load_model, read_config
    from rledger.probes.policies import ModelPolicy

    run = Path(run)
    if not (run / DONE).is_file():
        raise ReplayError(
            f"{run}: not a complete run folder (no DONE); pass a folder that `rledger ls` lists"
        )
    config = read_config(run)
    variants: dict[str, Any] = config["eval"]["variants"]
    names = list(variants) if variant is None else [variant]
    if variant is not None and variant not in variants:
        raise ReplayError(
            f"--variant: {variant!r} is not an evaluation variant of {run}; choose from {sorted(variants)}"
        )
    if episodes < 1:
        raise ReplayError(f"--episodes: must be >= 1, got {episodes}")
    out = run / "replay" if out is None else Path(out)
    targets = [(v, i, out / f"{v}-episode{i}.gif") for v in names for i in range(episodes)]
    existing = [p for *_, p in targets if p.exists()]
    if existing and not overwrite:
        raise ReplayError(f"{existing[0]}: exists; pass --overwrite to replace the clips")
    try:
        model = load_model(run, trust_pickles)
    except UntrustedModel as exc:
        raise ReplayError(str(exc)) from None
    policy = ModelPolicy(model, bool(config["eval"]["deterministic"]))
    envs = {v: make_render_env(config["env"]["id"], variants[v]) for v in names}
    written = []
    for v, i, path in targets:
        # the episode seed of the run's own evaluation (rledger.experiments.run.evaluate)
        frames = episode_frames(envs[v], policy, 1_000_000 + 1000 * int(config["seed"]) + i)
        written.append(write_gif(frames, path, fps, scale))
        mp4 = write_mp4([np.kron(f, np.ones((scale, scale, 1), dtype=np.uint8)) for f in frames],
                        path.with_suffix(".mp4"), fps)  # fmt: skip
        if mp4 is not None:
            written.append(mp4)
    return written


def probe_clips(
    root: Path, max_frames: int = 40, trust_pickles: bool = False
) -> dict[str, list[tuple[str, str, bytes]]]:
    """Per probe (``<experiment>/<probe>``, second views left out): one GIF per (policy, condition)
    of its first seed's first probe episode, at most ``max_frames`` frames: the trained policies
    (``ppo[<variant>]``) and the controls. Probes whose env cannot render, or whose runs cannot be
    loaded, get none (the report says so)."""
    from rledger.analysis.probes import find_probes
    from rledger.experiments.run import DONE, load_model, run_dir
    from rledger.experiments.spec import load_yaml, validate
    from rledger.probes.policies import ModelPolicy, PlannerPolicy, RandomPolicy

    clips: dict[str, list[tuple[str, str, bytes]]] = {}
    for folder in find_probes(root):
        exp_dir = folder.parent.parent
        try:
            spec = validate(load_yaml((exp_dir / "spec.yaml").read_text()), str(exp_dir / "spec.yaml"))
        except Exception:  # noqa: BLE001 - an unreadable saved spec: no clips for it
            continue
        probe = spec.probes.get(folder.name)
        if probe is None or probe.view_of is not None:
            continue
        seed = spec.seeds[0]
        policies: list[tuple[str, Any]] = []
        try:
            for variant in spec.train:
                path = run_dir(exp_dir.parent, spec.name, variant, seed)
                if (path / DONE).is_file():
                    model = load_model(path, trust_pickles)
                    policies.append((f"ppo[{variant}]", ModelPolicy(model, probe.deterministic)))
            found: list[tuple[str, str, bytes]] = []
            for condition in probe.conditions:
                kwargs = spec.env_kwargs_for(condition)
                env = make_render_env(spec.env_id, kwargs)
                controls = []
                if "planner" in probe.controls:
                    controls.append(("planner", PlannerPolicy(gym.make(spec.env_id, **kwargs))))
                if "random" in probe.controls:
                    controls.append(("random", RandomPolicy()))
                for name, policy in [*policies, *controls]:
                    frames = episode_frames(env, policy, seed * 10_000, max_frames)
                    found.append((name, condition, gif_bytes(frames, fps=6.0, scale=2)))
        except (ValueError, OSError):
            continue
        clips[f"{spec.name}/{probe.name}"] = found
    return clips
