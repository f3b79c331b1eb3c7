"""Reward-seeking probes: policies and controls, evaluation, bootstrap intervals, decision rules."""

from rledger.probes.evaluate import episode_metrics, run_episodes, tidy_rows
from rledger.probes.policies import ModelPolicy, PlannerPolicy, RandomPolicy
from rledger.probes.stats import Interval, SeeksReward, difference_interval, interval, summarize

__all__ = [
    "Interval", "ModelPolicy", "PlannerPolicy", "RandomPolicy", "SeeksReward", "difference_interval",
    "episode_metrics", "interval", "run_episodes", "summarize", "tidy_rows",
]  # fmt: skip
