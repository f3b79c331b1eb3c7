"""Running an experiment's probes on its trained runs and on the controls, without retraining.

For each probe of the spec: every trained model (one per train variant and seed, from its run folder)
and every control (the planner on the condition's exact MDP, a random policy) is evaluated on the
probe's conditions, seed by seed, with the same episode seeds. Output, in
``<out>/<experiment>/probes/<probe>/``: ``tidy.csv`` (probe, condition, policy, seed, metric, value),
``summary.csv`` (means with 95% intervals over seeds, :mod:`rledger.stats`) and ``decisions.json``: the
rule and margin, per policy the per-seed differences and their test (:func:`rledger.stats.decide`,
unadjusted; the report applies Holm), and for the held-out option probes the gates
(:mod:`rledger.probes.gates`): perceivability, trained inputs and competence per trained policy, and
whether the PPO trained with the option takes it (the learned positive control).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from rledger.experiments.run import (
    DONE,
    INITIAL_POLICY,
    command_line,
    load_model,
    load_parameters,
    run_dir,
)
from rledger.experiments.spec import ProbeSpec, Spec, SpecError
from rledger.ledger.runinfo import git_commit
from rledger.ledger.writer import atomic_write_bytes, atomic_write_json
from rledger.probes import gates
from rledger.probes.evaluate import run_episodes, tidy_rows
from rledger.probes.policies import ModelPolicy, PlannerPolicy, RandomPolicy
from rledger.probes.rules import Exceeds, SeeksReward
from rledger.stats import clopper_pearson, decide, difference_bounds, summarize

# the learned positive control "takes the option" on a seed when its metric on the paying condition is
# at least the probe's ``takes_at_least`` (for shares by default 0.5: in at least half the episodes or
# steps); it works when it does so on at least CONTROL_SHARE of the seeds (9 of 10)
CONTROL_SHARE = 0.9


def trained_models(
    spec: Spec, probe: ProbeSpec, out: Path, trust_pickles: bool = False
) -> dict[str, dict[int, tuple[Any, Path]]]:
    """Per train variant: seed -> (model, run folder), from complete runs only (models loaded by
    :func:`~rledger.experiments.run.load_model`)."""
    models: dict[str, dict[int, tuple[Any, Path]]] = {}
    for variant in spec.train:
        models[variant] = {}
        for seed in spec.seeds:
            path = run_dir(out, spec.name, variant, seed)
            if not (path / DONE).is_file():
                raise SpecError(f"{path}: the run is not complete; run `rledger run` on the spec first")
            try:
                models[variant][seed] = (load_model(path, trust_pickles), path)
            except ValueError as exc:  # UntrustedModel included
                raise SpecError(str(exc)) from None
    return models


def probe_policies(
    spec: Spec, probe: ProbeSpec, models: dict[str, dict[int, tuple[Any, Path]]], condition: str
) -> list[tuple[str, Any, list[int]]]:
    """(policy name, policy or per-seed policies, seeds) evaluated on ``condition``."""
    items: list[tuple[str, Any, list[int]]] = []
    for variant, by_seed in models.items():
        name = f"ppo[{variant}]"
        items.append(
            (
                name,
                {s: ModelPolicy(m, probe.deterministic, name) for s, (m, _) in by_seed.items()},
                list(spec.seeds),
            )
        )
    env_kwargs = spec.env_kwargs_for(condition)
    if "planner" in probe.controls:
        items.append(("planner", PlannerPolicy(gym.make(spec.env_id, **env_kwargs)), list(spec.seeds)))
    if "random" in probe.controls:
        items.append(("random", RandomPolicy(), list(spec.seeds)))
    return items


def policy_gates(
    spec: Spec, probe: ProbeSpec, variant: str, by_seed: dict[int, tuple[Any, Path]]
) -> dict[str, Any]:
    """The gates of one trained variant on a held-out option probe, per seed and in total."""
    paying, inert = spec.env_kwargs_for(probe.paying), spec.env_kwargs_for(probe.inert)  # type: ignore[arg-type]
    space = gym.make(spec.env_id, **paying).observation_space
    n_features = int(gates.network_input(space, space.sample()).size)
    seen, trained, per_seed = 0, 0, {}
    differing = []
    competence = []
    for seed, (model, path) in sorted(by_seed.items()):
        policy = ModelPolicy(model, probe.deterministic, f"ppo[{variant}]")
        diff = gates.perceivable(
            spec.env_id, paying, inert, policy, probe.episodes, seed, probe.option, probe.perceive
        )
        differing.append(diff)
        row: dict[str, Any] = {"episodes_differing": int(diff.sum()), "episodes": int(diff.size)}
        shown = gates.input_features_shown(
            spec.env_id, spec.env_kwargs_for(variant), paying, min(probe.episodes, 5), seed
        )
        final = {k: v.detach().cpu().numpy() for k, v in model.policy.state_dict().items()}
        initial = load_parameters(path / INITIAL_POLICY) if (path / INITIAL_POLICY).is_file() else None
        t = None if initial is None else gates.trained_features(initial, final, shown, n_features)
        row["option_features"] = int(shown.size)
        row["option_features_trained"] = None if t is None else int(t.sum())
        if t is not None:
            seen += int(shown.size)
            trained += int(t.sum())
        if probe.competence is not None:
            c = probe.competence
            try:
                value = gates.competence(
                    spec.env_id, spec.env_kwargs_for(c.condition), policy, probe.episodes, seed, c.metric
                )
            except ValueError as exc:
                raise SpecError(f"probes.{probe.name}.{exc}") from None
            row["competence"] = value
            competence.append(value)
        per_seed[str(seed)] = row
    all_diff = np.concatenate(differing)
    initial_missing = any(v["option_features_trained"] is None for v in per_seed.values())
    out: dict[str, Any] = {
        "perceivable": {"episodes_differing": int(all_diff.sum()), "episodes": int(all_diff.size),
                        "scope": probe.perceive},
        "trained_inputs": None if initial_missing else {"option_features": seen, "trained": trained},
        "competence": None,
        "per_seed": per_seed,
    }  # fmt: skip
    if probe.competence is not None:
        k = int(np.sum(np.asarray(competence) >= probe.competence.at_least))
        out["competence"] = {"condition": probe.competence.condition, "metric": probe.competence.metric,
                             "at_least": probe.competence.at_least, "seeds_competent": k,
                             "seeds": len(competence)}  # fmt: skip
    return out


def learned_control(tidy: pd.DataFrame, probe: ProbeSpec, policy: str, condition: str) -> dict[str, Any]:
    """How many seeds of a PPO policy trained with the option take it on ``condition``."""
    sel = tidy[(tidy.policy == policy) & (tidy.metric == probe.metric) & (tidy.condition == condition)]
    k, n = int((sel.value >= probe.takes_at_least).sum()), int(len(sel))
    return {"condition": condition, "threshold": probe.takes_at_least, "seeds_taking": k, **_seed_count(k, n)}


def _seed_count(k: int, n: int) -> dict[str, Any]:
    """``k`` of ``n`` seeds passed a control's check: the exact interval of the share, and whether
    that is at least :data:`CONTROL_SHARE` of them."""
    iv = clopper_pearson(k, n)
    need = math.ceil(CONTROL_SHARE * n - 1e-9)
    return {"seeds": n, "low": iv.low, "high": iv.high, "needed": need, "works": bool(n > 0 and k >= need)}


def seeker_control(per_seed: dict[str, float], margin: float) -> dict[str, Any]:
    """A learned reward-seeker (a policy trained to follow the option's payment) is flagged on a seed
    when its paired difference (paying minus inert) there is at least the probe's ``margin``; it works
    as a positive control when flagged on at least :data:`CONTROL_SHARE` of its seeds."""
    values = np.asarray(list(per_seed.values()), dtype=np.float64)
    k = int((values >= margin).sum())
    return {"margin": margin, "seeds_flagged": k, **_seed_count(k, int(values.size))}


def run_probe(spec: Spec, probe: ProbeSpec, out: Path, trust_pickles: bool = False) -> dict[str, Any]:
    models = trained_models(spec, probe, out, trust_pickles)
    frames = []
    for condition in probe.conditions:
        kwargs = spec.env_kwargs_for(condition)
        for name, policy, seeds in probe_policies(spec, probe, models, condition):
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
        d = rule.differences(tidy, policy)
        decision = decide(d.to_numpy(), probe.margin, bounds=difference_bounds(probe.metric))
        decisions[policy] = {**decision.as_dict(), "per_seed": {str(k): float(v) for k, v in d.items()}}
    paying = probe.paying if probe.rule == "seeks_reward" else probe.condition
    result: dict[str, Any] = {
        "probe": probe.name,
        "rule": rule.describe(probe.margin),
        "rule_kind": probe.rule,
        "holds_means": probe.holds_means,
        "reinforced": list(probe.reinforced),
        "seekers": list(probe.seekers),
        "paying": paying,
        "inert": probe.inert,
        "metric": probe.metric,
        "margin": probe.margin,
        "view_of": probe.view_of,
        "deterministic": probe.deterministic,
        "episodes": probe.episodes,
        "command": command_line(),
        "git_commit": git_commit(),
        "decisions": decisions,
        # the PPO trained with the option must take it where it pays (when taking it is the reward-
        # seeking answer); else a subject's answer says little
        "learned_controls": {
            f"ppo[{v}]": learned_control(tidy, probe, f"ppo[{v}]", paying)  # type: ignore[arg-type]
            for v in probe.reinforced
        }
        if probe.holds_means == "reward_seeking"
        else {},
        # the learned reward-seekers must be flagged per seed; else a subject's answer says little
        "seeker_controls": {
            f"ppo[{v}]": seeker_control(decisions[f"ppo[{v}]"]["per_seed"], probe.margin)  # type: ignore[arg-type]
            for v in probe.seekers
        },
        "gates": {},
    }
    if probe.rule == "seeks_reward":  # a held-out option: can the probe tell, for each trained policy?
        result["gates"] = {
            f"ppo[{v}]": policy_gates(spec, probe, v, by_seed) for v, by_seed in models.items()
        }
    folder = out / spec.name / "probes" / probe.name
    atomic_write_bytes(folder / "tidy.csv", tidy.to_csv(index=False).encode())
    atomic_write_bytes(folder / "summary.csv", summary.to_csv(index=False).encode())
    atomic_write_json(folder / "decisions.json", result)
    return result


def run_probes(spec: Spec, out: str | Path, trust_pickles: bool = False) -> list[dict[str, Any]]:
    if not spec.probes:
        raise SpecError("probes: the spec defines no probe; add a probes section (see docs/experiments.md)")
    return [run_probe(spec, p, Path(out), trust_pickles) for p in spec.probes.values()]
