"""Suites: several experiment specs run together, then their probes, then the report.

A suite file (``experiments/quickstart.yaml``) names its specs by path, relative to the suite file, each
with optional overrides written as a mapping of ``key.path: value`` (the same as ``--set``)::

    name: quickstart
    experiments:
      - spec: probe_lagoon.yaml
        set: {seeds: 0-1, total_timesteps: 200000}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rledger.experiments.spec import Spec, SpecError, load_spec, load_yaml, parse_seeds


@dataclass(frozen=True)
class Suite:
    """``specs``: the experiments the suite file names; ``reward_scale``: the reward-scale sweep of
    probe 5 as an experiment spec of its own (``rledger.probes.reward_scale.sweep_spec``), or None."""

    name: str
    specs: tuple[Spec, ...]
    budget_seconds: float | None
    reward_scale: Spec | None = None

    @property
    def all_specs(self) -> tuple[Spec, ...]:
        """Every experiment the suite runs, the sweep included."""
        return self.specs + ((self.reward_scale,) if self.reward_scale is not None else ())

    @property
    def total_timesteps(self) -> int:
        return sum(s.total_timesteps * len(s.seeds) * len(s.train) for s in self.all_specs)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file and every spec it names (errors name the field and the fix)."""
    p = Path(path)
    try:
        raw = load_yaml(p.read_text())
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the suite ({exc.strerror or exc}); check the path") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a text (UTF-8) file; a suite is YAML") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: a suite is a mapping with 'name' and 'experiments'")
    unknown = set(raw) - {"name", "experiments", "budget_seconds", "reward_scale"}
    if unknown:
        raise SpecError(
            f"{p}: unknown key(s) {sorted(unknown)}; allowed: name, experiments, budget_seconds, reward_scale"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{p}: name: must be a non-empty string")
    items = raw.get("experiments")
    if not isinstance(items, list) or not items:
        raise SpecError(f"{p}: experiments: must be a non-empty list of {{spec: FILE, set: {{...}}}}")
    budget = raw.get("budget_seconds")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        raise SpecError(f"{p}: budget_seconds: must be a positive number, got {budget!r}")
    specs = []
    for i, item in enumerate(items):
        where = f"{p}: experiments[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("spec"), str) or set(item) - {"spec", "set"}:
            raise SpecError(f"{where}: must be a mapping {{spec: FILE, set: {{key.path: value}}}}")
        overrides = item.get("set") or {}
        if not isinstance(overrides, dict):
            raise SpecError(f"{where}.set: must be a mapping of key.path: value")
        specs.append(load_spec(p.parent / item["spec"], [_override(k, v) for k, v in overrides.items()]))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpecError(f"{p}: experiments: two specs share an experiment name ({names}); names must differ")
    sweep = _reward_scale(raw, p)
    if sweep is not None and sweep.name in names:
        raise SpecError(
            f"{p}: experiments: {sweep.name!r} is the reward-scale sweep's name; rename that spec"
        )
    return Suite(name, tuple(specs), float(budget) if budget is not None else None, sweep)


def _reward_scale(raw: dict[str, Any], p: Path) -> Spec | None:
    body = raw.get("reward_scale")
    if body is None:
        return None
    where = f"{p}: reward_scale"
    if not isinstance(body, dict) or set(body) - {"env", "seeds", "timesteps", "grid"}:
        raise SpecError(f"{where}: must be a mapping with env, seeds, timesteps, grid")
    import gymnasium as gym

    import rledger.envs  # noqa: F401

    env_id = body.get("env", "rledger/BoatRace-v0")
    if env_id not in gym.registry:
        raise SpecError(f"{where}.env: unknown environment id {env_id!r}")
    seeds = parse_seeds(body.get("seeds", [0]), "reward_scale.seeds")
    timesteps = body.get("timesteps", 16_384)
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps <= 0:
        raise SpecError(f"{where}.timesteps: must be a positive integer, got {timesteps!r}")
    grid = body.get("grid")
    ok = (
        isinstance(grid, list)
        and grid
        and all(
            isinstance(g, list)
            and len(g) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in g)
            for g in grid
        )
    )
    if not ok:
        raise SpecError(f"{where}.grid: must be a non-empty list of [c, b] pairs, e.g. [[10, 0], [1, 1]]")
    from rledger.probes.reward_scale import sweep_spec

    return sweep_spec(env_id, tuple((float(c), float(b)) for c, b in grid), seeds=seeds, timesteps=timesteps)


def _override(key: Any, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def default_suite_path() -> Path:
    """``experiments/quickstart.yaml``: beside the source tree in a checkout, or shipped in the wheel."""
    here = Path(__file__).resolve()
    checkout = here.parents[2] / "experiments" / "quickstart.yaml"
    if checkout.is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("rledger.experiment_specs") / "quickstart.yaml"))
