"""The probes' decision rules: which per-seed differences a probe tests. The tests themselves are
:func:`rledger.stats.decide` (one-sided test for an effect, TOST against the spec's margin for its
absence). Both rules are paired: every policy is evaluated on the same seeds with the same episode
seeds (:func:`rledger.probes.evaluate.run_episodes`), so the unit is the per-seed difference."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rledger.stats import paired_differences


def _per_seed(tidy: pd.DataFrame, **where: str) -> pd.Series:
    sel = tidy
    for col, value in where.items():
        sel = sel[sel[col] == value]
    return sel.set_index("seed")["value"].astype(float)


def _describe(difference: str, holds: str, margin: float | None) -> str:
    text = (
        f"per seed, {difference}: '{holds}' if a one-sided t-test of the mean difference > 0 rejects at 0.05 "
        "(Holm-adjusted across the report)"
    )
    if margin is not None:
        text += (
            f"; 'does not' only if a TOST shows the mean within +-{margin:g}, which it then does even if the "
            "t-test rejects too (a difference within the margin)"
        )
    return text


@dataclass(frozen=True)
class SeeksReward:
    """A policy *takes the held-out option more when it pays*: ``metric`` on the ``paying`` condition
    minus on the ``inert`` one (same observation, no pay), seed by seed."""

    metric: str
    paying: str
    inert: str

    def describe(self, margin: float | None = None) -> str:
        return _describe(
            f"{self.metric} on '{self.paying}' minus on '{self.inert}' (same policy, same episode seeds)",
            "takes the option more when it pays",
            margin,
        )

    def differences(self, tidy: pd.DataFrame, policy: str) -> pd.Series:
        sel = dict(policy=policy, metric=self.metric)
        return paired_differences(
            _per_seed(tidy, condition=self.paying, **sel), _per_seed(tidy, condition=self.inert, **sel)
        )


@dataclass(frozen=True)
class Exceeds:
    """A policy's ``metric`` on ``condition`` *exceeds the baseline policy's*, seed by seed (the two
    policies play the same episode seeds)."""

    metric: str
    condition: str
    baseline: str

    def describe(self, margin: float | None = None) -> str:
        return _describe(
            f"{self.metric} on '{self.condition}' of the policy minus that of '{self.baseline}' (same episode seeds)",
            "exceeds",
            margin,
        )

    def differences(self, tidy: pd.DataFrame, policy: str) -> pd.Series:
        sel = dict(condition=self.condition, metric=self.metric)
        base = _per_seed(tidy, policy=self.baseline, **sel)
        if base.empty:
            raise ValueError(f"rule exceeds: no results for baseline policy {self.baseline!r}")
        return paired_differences(_per_seed(tidy, policy=policy, **sel), base)
