"""Experiments: YAML specs, one run per (variant, seed) folder, local or Ray execution."""

from rledger.experiments.backends import Job, list_runs, plan_runs, run_local, run_ray
from rledger.experiments.run import execute, run_dir
from rledger.experiments.spec import Spec, SpecError, load_spec, parse_seeds, validate

__all__ = [
    "Job", "Spec", "SpecError", "execute", "list_runs", "load_spec", "parse_seeds", "plan_runs",
    "run_dir", "run_local", "run_ray", "validate",
]  # fmt: skip
