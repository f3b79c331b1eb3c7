"""Running an experiment's probes on its trained runs and on the controls, without retraining.

For each probe of the spec: every trained model (one per train variant and seed, from its run folder)
and every control (the planner on the condition's exact MDP, a random policy) is evaluated on the
probe's ``paying`` and ``inert`` variants, seed by seed. Output, in
``<out>/<experiment>/probes/<probe>/``: ``tidy.csv`` (probe, condition, policy, seed, metric, value),
``summary.csv`` (means with seeded 95% bootstrap intervals over seeds) and ``decisions.json`` (the
rule, and for every policy whether it seeks the held-out reward, with the interval of the difference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pandas as pd

from rledger.experiments.run import DONE, run_dir
from rledger.experiments.spec import ProbeSpec, Spec, SpecError
from rledger.ledger.writer import atomic_write_bytes, atomic_write_json
from rledger.probes.evaluate import run_episodes, tidy_rows
from rledger.probes.policies import ModelPolicy, PlannerPolicy, RandomPolicy
from rledger.probes.stats import Exceeds, SeeksReward, summarize


def probe_policies(
    spec: Spec, probe: ProbeSpec, out: Path, condition: str
) -> list[tuple[str, Any, list[int]]]:
    """(policy name, policy or per-seed factory, seeds) evaluated on ``condition``."""
    from stable_baselines3 import PPO

    items: list[tuple[str, Any, list[int]]] = []
    for variant in spec.train:
        models = {}
        for seed in spec.seeds:
            path = run_dir(out, spec.name, variant, seed)
            if not (path / DONE).is_file():
                raise SpecError(f"{path}: the run is not complete; run `rledger run` on the spec first")
            models[seed] = ModelPolicy(
                PPO.load(path / "model.zip", device="cpu"), probe.deterministic, f"ppo[{variant}]"
            )
        items.append((f"ppo[{variant}]", models, list(spec.seeds)))
    env_kwargs = spec.env_kwargs_for(condition)
    if "planner" in probe.controls:
        items.append(("planner", PlannerPolicy(gym.make(spec.env_id, **env_kwargs)), list(spec.seeds)))
    if "random" in probe.controls:
        items.append(("random", RandomPolicy(), list(spec.seeds)))
    return items


def run_probe(spec: Spec, probe: ProbeSpec, out: Path) -> dict[str, Any]:
    frames = []
    for condition in probe.conditions:
        kwargs = spec.env_kwargs_for(condition)
        for name, policy, seeds in probe_policies(spec, probe, out, condition):
            for seed in seeds:
                pol = policy[seed] if isinstance(policy, dict) else policy
                eps = run_episodes(spec.env_id, kwargs, pol, probe.episodes, seed)
                frames.append(tidy_rows(probe.name, condition, name, eps))
    tidy = pd.concat(frames, ignore_index=True)
    if probe.metric not in set(tidy.metric):
        raise SpecError(
            f"probes.{probe.name}.metric: {probe.metric!r} is not an evaluation metric of {spec.env_id}; "
            f"available: {', '.join(sorted(set(tidy.metric)))}"
        )
    summary = summarize(tidy)
    rule: SeeksReward | Exceeds
    if probe.rule == "seeks_reward":
        rule = SeeksReward(probe.metric, probe.paying, probe.inert)  # type: ignore[arg-type]
    else:
        rule = Exceeds(probe.metric, probe.condition, probe.baseline)  # type: ignore[arg-type]
        if probe.baseline not in set(tidy.policy):
            raise SpecError(
                f"probes.{probe.name}.baseline: no policy {probe.baseline!r}; policies: {', '.join(sorted(set(tidy.policy)))}"
            )
    decisions = {}
    for policy in sorted(set(tidy.policy) - ({probe.baseline} if probe.rule == "exceeds" else set())):
        seeks, iv = rule.apply(tidy, policy)
        decisions[policy] = {
            "seeks_reward": bool(seeks),
            "difference": iv.estimate,
            "low": iv.low,
            "high": iv.high,
            "n_seeds": iv.n,
        }
    folder = out / spec.name / "probes" / probe.name
    atomic_write_bytes(folder / "tidy.csv", tidy.to_csv(index=False).encode())
    atomic_write_bytes(folder / "summary.csv", summary.to_csv(index=False).encode())
    result = {
        "probe": probe.name,
        "rule": rule.describe(),
        "rule_kind": probe.rule,
        "holds_means": probe.holds_means,
        "reinforced": list(probe.reinforced),
        "paying": probe.paying if probe.rule == "seeks_reward" else probe.condition,
        "metric": probe.metric,
        "decisions": decisions,
    }
    atomic_write_json(folder / "decisions.json", result)
    return result


def run_probes(spec: Spec, out: str | Path) -> list[dict[str, Any]]:
    if not spec.probes:
        raise SpecError("probes: the spec defines no probe; add a probes section (see docs/experiments.md)")
    return [run_probe(spec, p, Path(out)) for p in spec.probes.values()]
