"""Reward-seeking probes: policies and controls, evaluation, decision rules and the gates that say
when a probe cannot tell (statistics: :mod:`rledger.stats`)."""

from rledger.probes.evaluate import episode_metrics, run_episodes, tidy_rows
from rledger.probes.policies import ModelPolicy, PlannerPolicy, RandomPolicy
from rledger.probes.rules import Exceeds, SeeksReward

__all__ = [
    "Exceeds", "ModelPolicy", "PlannerPolicy", "RandomPolicy", "SeeksReward", "episode_metrics",
    "run_episodes", "tidy_rows",
]  # fmt: skip
