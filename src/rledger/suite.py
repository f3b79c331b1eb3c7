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

from rledger.experiments.spec import Spec, SpecError, load_spec


@dataclass(frozen=True)
class Suite:
    name: str
    specs: tuple[Spec, ...]
    budget_seconds: float | None

    @property
    def total_timesteps(self) -> int:
        return sum(s.total_timesteps * len(s.seeds) * len(s.train) for s in self.specs)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file and every spec it names (errors name the field and the fix)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the suite ({exc.strerror or exc}); check the path") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: a suite is a mapping with 'name' and 'experiments'")
    unknown = set(raw) - {"name", "experiments", "budget_seconds"}
    if unknown:
        raise SpecError(f"{p}: unknown key(s) {sorted(unknown)}; allowed: name, experiments, budget_seconds")
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
    return Suite(name, tuple(specs), float(budget) if budget is not None else None)


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
