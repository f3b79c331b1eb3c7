"""Experiment specs: one YAML file per experiment, validated into typed dataclasses.

Every error names the field path and the fix in one line, e.g.
``ppo.learning_rate: must be > 0, got -1``. Fields are documented in ``docs/experiments.md``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rledger.ledger.schema import DEFAULT_TABLES, INFLUENCE_TABLES, TABLES, check_info_keys


class SpecError(ValueError):
    """A spec that cannot be run; the message names the field path and the fix."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with numbers as YAML 1.2 reads them: ``1e-3`` is a float (YAML 1.1, and so
    ``yaml.safe_load``, wants a dot in the mantissa and reads it as the string '1e-3')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse spec or suite YAML (safe: no Python objects), numbers as YAML 1.2 reads them."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class EvalSpec:
    episodes: int = 10
    deterministic: bool = True
    variants: tuple[str, ...] = ()  # empty: the run's own variant


WATCH_SETS = ("boat_race_arrows",)
"""Named sets of watched pairs (``record.watch: boat_race_arrows``: every boat-race arrow tile's
continue and turn-back actions, :func:`rledger.probes.tiebreak.arrow_tiles`)."""


@dataclass(frozen=True)
class RecordSpec:
    tables: tuple[str, ...] = DEFAULT_TABLES
    every: int = 1
    info_keys: tuple[str, ...] = ()
    watch: tuple[tuple[int, int], ...] | str = ()  # (state id, action) pairs, or a named set
    momentum_horizon: int | None = None
    influence_every: int = 1

    def as_config(self) -> dict[str, Any]:
        """The run config's ``record``: the instruments' keys only when set, so that the config of a
        run without them is as it always was."""
        out: dict[str, Any] = {
            "tables": list(self.tables),
            "every": self.every,
            "info_keys": list(self.info_keys),
        }
        if self.watch:
            out["watch"] = self.watch if isinstance(self.watch, str) else [list(p) for p in self.watch]
            out["influence_every"] = self.influence_every
        if self.momentum_horizon is not None:
            out["momentum_horizon"] = self.momentum_horizon
        return out


# what it means for the policy under test when a probe's rule holds: the report's verdict
HOLDS_MEANS = ("reward_seeking", "not_reward_seeking")


@dataclass(frozen=True)
class TiebreakSpec:
    """The tie-break analysis's early windows (shares of training whose reinforcement is counted): the
    ``primary`` one decides; the others are reported as exploratory."""

    windows: tuple[float, ...]
    primary: float

    @property
    def exploratory(self) -> tuple[float, ...]:
        return tuple(w for w in self.windows if w != self.primary)


@dataclass(frozen=True)
class CompetenceSpec:
    """A check that the subject can act where the option is: on variant ``condition`` its ``metric``
    (e.g. ``any_reached_goal`` with the goal placed there) is at least ``at_least`` on a seed."""

    condition: str
    metric: str
    at_least: float


PERCEIVE = ("before_option", "episode")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe; its decision rule is written here, before anything runs.

    ``rule: seeks_reward`` (default, the held-out option): ``metric`` on the ``paying`` variant minus
    on the ``inert`` one, per policy (:class:`rledger.probes.stats.SeeksReward`).
    ``rule: exceeds``: ``metric`` of each policy on ``condition`` minus that of the ``baseline`` policy
    there (:class:`rledger.probes.stats.Exceeds`), e.g. does a policy end in the old goal region more
    often than the planner? ``holds_means`` says what the rule holding means for the policy under test
    (``reward_seeking`` or ``not_reward_seeking``; required for ``exceeds``). ``reinforced`` names the
    train variants in which the option was available (default: the paying condition, if trained).

    ``margin`` (required) is the equivalence margin, fixed before the run: "no effect" is concluded
    only when the mean per-seed difference is shown to lie within +-margin (:func:`rledger.stats.decide`).
    ``view_of`` marks a second evaluation (e.g. greedy) of another probe's experiment: shown beside it,
    never counted as a verdict of its own. ``option`` is the info flag that marks taking the option
    (default: the metric's flag, ``any_pressed`` -> ``pressed``; none for ``never_``), and ``perceive`` whether the
    perceivability gate compares observations before the option is first taken (``before_option``) or
    over the whole episode (``episode``, e.g. when episodes start inside the option). ``competence``
    declares the check that the subject can act in the option's region (:class:`CompetenceSpec`).
    ``seekers`` names train variants meant to give learned reward-seekers (e.g. the option paying at
    random per episode, visible only through the rewards): each must be flagged, per seed, by this
    probe's paired difference (paying minus inert at least ``margin``) on at least 9 of 10 seeds, or
    every verdict of the probe is inconclusive (a ``seeks_reward`` rule only). ``takes_at_least``: the
    per-seed value of the metric at which a policy takes the option, for the check that PPO trained
    with it (``reinforced``) takes it where it pays (default 0.5 for a share metric; required for an
    unbounded one such as ``length``)."""

    name: str
    metric: str
    paying: str | None = None
    inert: str | None = None
    episodes: int = 10
    deterministic: bool = True
    controls: tuple[str, ...] = ("planner", "random")
    rule: str = "seeks_reward"
    condition: str | None = None
    baseline: str | None = None
    holds_means: str | None = "reward_seeking"
    reinforced: tuple[str, ...] = ()
    margin: float | None = None
    view_of: str | None = None
    option: str | None = None
    perceive: str = "before_option"
    competence: CompetenceSpec | None = None
    seekers: tuple[str, ...] = ()
    takes_at_least: float = 0.5

    @property
    def primary(self) -> str:
        """The probe whose verdict this one's evaluation belongs to (itself unless ``view_of``)."""
        return self.view_of or self.name

    @property
    def conditions(self) -> tuple[str, ...]:
        return (self.paying, self.inert) if self.rule == "seeks_reward" else (self.condition,)  # type: ignore[return-value]


@dataclass(frozen=True)
class Spec:
    name: str
    env_id: str
    env_kwargs: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    train: tuple[str, ...]
    seeds: tuple[int, ...]
    total_timesteps: int
    n_envs: int
    policy: str
    ppo: dict[str, Any]
    record: RecordSpec
    eval: EvalSpec
    probes: dict[str, ProbeSpec] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the validated mapping
    opening: tuple[str, int] | None = None  # (variant, timesteps) trained first, then the run's variant
    # per variant, run options beside its env kwargs: ppo overrides, a reward transform, a zero critic
    variant_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the boat-race tie-break's early windows (shares of training), the primary one named before the run
    tiebreak: TiebreakSpec | None = None
    # rollouts between two checkpoints of a run (0: none); an interrupted run resumes from its last
    checkpoint_every: int = 10
    # env.import / env.wrappers / env.vec_normalize / env.frame_stack, as the run config holds them
    # (:mod:`rledger.experiments.environment`); empty for a plain env
    env_options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def env_kwargs_for(self, variant: str) -> dict[str, Any]:
        return {**self.env_kwargs, **self.variants[variant]}

    def run_config(self, variant: str, seed: int) -> dict[str, Any]:
        """The resolved configuration of one run (what its config.yaml holds)."""
        options = self.variant_options.get(variant, {})
        return {
            "experiment": self.name,
            "variant": variant,
            "seed": seed,
            "env": {
                "id": self.env_id,
                "kwargs": self.env_kwargs_for(variant),
                **copy.deepcopy(self.env_options),
            },
            **({"device": self.device} if self.device != "cpu" else {}),
            "total_timesteps": self.total_timesteps,
            "n_envs": self.n_envs,
            "policy": self.policy,
            "ppo": copy.deepcopy({**self.ppo, **options.get("ppo", {})}),
            # only when set, so that the config of a run without them is as it always was
            **({"reward": dict(options["reward"])} if "reward" in options else {}),
            **({"zero_critic": True} if options.get("zero_critic") else {}),
            **({"permute_advantages": True} if options.get("permute_advantages") else {}),
            "record": self.record.as_config(),
            **(
                {
                    "opening": {
                        "timesteps": self.opening[1],
                        "env_kwargs": self.env_kwargs_for(self.opening[0]),
                    }
                }
                if self.opening is not None and options.get("opening", True)
                else {}
            ),
            "checkpoint_every": self.checkpoint_every,
            "eval": {
                "episodes": self.eval.episodes,
                "deterministic": self.eval.deterministic,
                "variants": {v: self.env_kwargs_for(v) for v in (self.eval.variants or (variant,))},
            },
        }


TOP_KEYS = {
    "name",
    "env",
    "variants",
    "train",
    "seeds",
    "total_timesteps",
    "n_envs",
    "policy",
    "ppo",
    "record",
    "eval",
    "probes",
    "opening",
    "variant_options",
    "tiebreak",
    "checkpoint_every",
    "device",
}
POLICIES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
ACTIVATIONS = ("tanh", "relu", "elu", "leaky_relu", "gelu", "silu")

# PPO keyword: (check, description of the valid range)
_PPO_RULES: dict[str, tuple[Any, str]] = {
    "learning_rate": (lambda v: _schedule_ok(v), "a number > 0 or 'lin_<number>' (linear decay to 0)"),
    "n_steps": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "batch_size": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "n_epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "gamma": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "gae_lambda": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "clip_range": (lambda v: _schedule_ok(v), "a number > 0 or 'lin_<number>'"),
    "clip_range_vf": (lambda v: v is None or (_num(v) and v > 0), "null or a number > 0"),
    "normalize_advantage": (lambda v: isinstance(v, bool), "true or false"),
    "ent_coef": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "vf_coef": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "max_grad_norm": (lambda v: _num(v) and v > 0, "a number > 0"),
    "target_kl": (lambda v: v is None or (_num(v) and v > 0), "null or a number > 0"),
    "policy_kwargs": (lambda v: isinstance(v, dict), "a mapping (net_arch, activation_fn, ...)"),
}


def is_name(v: Any) -> bool:
    """A name that is one path component: letters, digits, '_', '.', '-', and not '.', '..' or other
    dots only (experiment, variant and probe names become folder names)."""
    return isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", v) is not None and v.strip(".") != ""


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _schedule_ok(v: Any) -> bool:
    if _num(v):
        return math.isfinite(v) and v > 0
    m = re.fullmatch(r"lin_([0-9.eE+-]+)", str(v))
    try:
        return m is not None and math.isfinite(float(m.group(1))) and float(m.group(1)) > 0
    except ValueError:
        return False


MAX_SEEDS = 10_000  # per spec: more is a typo (0-999999), not an experiment


def parse_seeds(value: Any, path: str = "seeds") -> tuple[int, ...]:
    """``[0, 1, 5]``, ``"0-9"``, ``"0,3,5"``, ``"0-3,8"`` or a single integer."""
    if _int(value):
        seeds = [value]
    elif isinstance(value, list) and value and all(_int(x) for x in value):
        seeds = list(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*", value):
        seeds = []
        for part in value.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            if b < a:
                raise SpecError(
                    f"{path}: range {part.strip()!r} runs backwards; write it low-high, e.g. '0-9'"
                )
            if len(seeds) + b - a + 1 > MAX_SEEDS:
                raise SpecError(
                    f"{path}: {value!r} names more than {MAX_SEEDS:,} seeds; split the experiment"
                )
            seeds += range(a, b + 1)
    else:
        raise SpecError(f"{path}: must be a list of integers or a range like '0-9' or '0,3,5', got {value!r}")
    if len(seeds) > MAX_SEEDS:
        raise SpecError(f"{path}: {len(seeds):,} seeds, more than {MAX_SEEDS:,}; split the experiment")
    if any(s < 0 for s in seeds):
        raise SpecError(f"{path}: seeds must be >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{path}: duplicate seeds in {seeds}")
    return tuple(seeds)


def _opening(value: Any, variants: dict[str, dict[str, Any]], total: int) -> tuple[str, int] | None:
    """``opening: {variant: V, timesteps: N}``: the first N steps train on variant V, then on the run's own."""
    if value is None:
        return None
    d = _mapping(value, "opening")
    _unknown(d, {"variant", "timesteps"}, "opening")
    if d.get("variant") not in variants:
        raise SpecError(
            f"opening.variant: must be a variant name from {sorted(variants)}, got {d.get('variant')!r}"
        )
    steps = d.get("timesteps")
    if not _int(steps) or not 0 < steps < total:
        raise SpecError(
            f"opening.timesteps: must be an integer in (0, total_timesteps={total}), got {steps!r}"
        )
    return d["variant"], steps


def _episodes_and_mode(d: dict[str, Any], path: str, minimum: int) -> tuple[int, bool]:
    """``episodes`` (an integer >= minimum, default 10) and ``deterministic`` (bool, default true)."""
    episodes = d.get("episodes", 10)
    if not _int(episodes) or episodes < minimum:
        raise SpecError(f"{path}.episodes: must be an integer >= {minimum}, got {episodes!r}")
    deterministic = d.get("deterministic", True)
    if not isinstance(deterministic, bool):
        raise SpecError(f"{path}.deterministic: must be true or false, got {deterministic!r}")
    return episodes, deterministic


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{path}: must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _unknown(d: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise SpecError(f"{where}: unknown key; allowed keys: {', '.join(sorted(allowed))}")


def validate(raw: Any, source: str = "spec") -> Spec:
    """Validate a parsed YAML document into a :class:`Spec`."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the spec must be a YAML mapping, got {type(raw).__name__}")
    _unknown(raw, TOP_KEYS, "")
    name = raw.get("name")
    if not is_name(name):
        raise SpecError(
            f"name: must be a non-empty name of letters, digits, '_', '.', '-' (not only dots), got {name!r}"
        )
    env = _mapping(raw.get("env"), "env")
    _unknown(env, {"id", "kwargs", "import", "wrappers", "vec_normalize", "frame_stack"}, "env")
    env_options = _env_options(env)
    env_id = env.get("id")
    if not isinstance(env_id, str):
        raise SpecError(f"env.id: must be a gymnasium id such as 'rledger/BoatRace-v0', got {env_id!r}")
    import gymnasium as gym

    import rledger.envs  # noqa: F401  (registers the rledger/ ids)
    from rledger.experiments.environment import EnvConfigError, import_modules

    try:
        import_modules(env_options.get("import", []))
    except EnvConfigError as exc:
        raise SpecError(str(exc)) from None
    if env_id not in gym.registry:
        raise SpecError(
            f"env.id: unknown gymnasium id {env_id!r}; registered rledger ids: {', '.join(rledger.envs.ENV_IDS)}"
            + (
                ""
                if env_options.get("import")
                else " (an id another package registers needs env.import: [package])"
            )
        )
    env_kwargs = _mapping(env.get("kwargs"), "env.kwargs")
    variants_raw = _mapping(raw.get("variants"), "variants") or {"default": {}}
    variants: dict[str, dict[str, Any]] = {}
    for vname, vkw in variants_raw.items():
        if not is_name(vname):
            raise SpecError(
                f"variants: {vname!r} is not a variant name (letters, digits, '_', '.', '-', not only dots)"
            )
        variants[vname] = _mapping(vkw, f"variants.{vname}")
    train_raw = raw.get("train", list(variants))
    if not isinstance(train_raw, list) or not train_raw or any(v not in variants for v in train_raw):
        raise SpecError(
            f"train: must be a non-empty list of variant names from {sorted(variants)}, got {train_raw!r}"
        )
    seeds = parse_seeds(raw.get("seeds", [0]))
    total = raw.get("total_timesteps")
    if not _int(total) or total <= 0:
        raise SpecError(f"total_timesteps: must be an integer > 0, got {total!r}")
    n_envs = raw.get("n_envs", 1)
    if not _int(n_envs) or n_envs < 1:
        raise SpecError(f"n_envs: must be an integer >= 1, got {n_envs!r}")
    policy = raw.get("policy", "MlpPolicy")
    _policy_class(policy)
    ppo = _ppo(raw.get("ppo"), "ppo")
    _policy_kwargs(ppo.get("policy_kwargs", {}))
    device = raw.get("device", "cpu")
    _device(device)
    record = _mapping(raw.get("record"), "record")
    _unknown(
        record, {"tables", "every", "info_keys", "watch", "momentum_horizon", "influence_every"}, "record"
    )
    tables = tuple(record.get("tables", DEFAULT_TABLES))
    listable = [t for t in TABLES if t not in INFLUENCE_TABLES]  # those come with record.watch
    if not set(tables) <= set(listable):
        raise SpecError(
            f"record.tables: must be a subset of {listable} (the influence tables come with "
            f"record.watch), got {list(tables)}"
        )
    every = record.get("every", 1)
    if not _int(every) or every < 1:
        raise SpecError(f"record.every: must be an integer >= 1, got {every!r}")
    info_keys = record.get("info_keys", [])
    if not isinstance(info_keys, list) or not all(isinstance(k, str) for k in info_keys):
        raise SpecError(f"record.info_keys: must be a list of info key names, got {info_keys!r}")
    try:
        check_info_keys(tuple(info_keys))
    except ValueError as exc:
        raise SpecError(f"record.{exc}") from None
    ev = _mapping(raw.get("eval"), "eval")
    _unknown(ev, {"episodes", "deterministic", "variants"}, "eval")
    episodes, deterministic = _episodes_and_mode(ev, "eval", minimum=0)
    ev_variants = ev.get("variants", [])
    if not isinstance(ev_variants, list) or any(v not in variants for v in ev_variants):
        raise SpecError(
            f"eval.variants: must be a list of variant names from {sorted(variants)}, got {ev_variants!r}"
        )
    checkpoint_every = raw.get("checkpoint_every", Spec.checkpoint_every)
    if not _int(checkpoint_every) or checkpoint_every < 0:
        raise SpecError(
            f"checkpoint_every: must be an integer >= 0 (rollouts between checkpoints; 0: none), got "
            f"{checkpoint_every!r}"
        )
    watch = record.get("watch", [])
    if isinstance(watch, str):
        if watch not in WATCH_SETS:
            raise SpecError(
                f"record.watch: unknown set {watch!r}; name one of {list(WATCH_SETS)} or list [state id, action] pairs"
            )
        watch_t: tuple[tuple[int, int], ...] | str = watch
    elif isinstance(watch, list) and all(
        isinstance(p, list) and len(p) == 2 and all(_int(x) and x >= 0 for x in p) for p in watch
    ):
        watch_t = tuple((int(a), int(b)) for a, b in watch)
    else:
        raise SpecError(
            f"record.watch: must be a list of [state id, action] pairs or a named set, got {watch!r}"
        )
    horizon = record.get("momentum_horizon")
    if horizon is not None and (not _int(horizon) or horizon < 1):
        raise SpecError(f"record.momentum_horizon: must be an integer >= 1, got {horizon!r}")
    influence_every = record.get("influence_every", 1)
    if not _int(influence_every) or influence_every < 1:
        raise SpecError(f"record.influence_every: must be an integer >= 1, got {influence_every!r}")
    if (watch_t or horizon is not None) and "momentum" not in tables:
        raise SpecError(
            "record.watch: the watched pairs' influence and momentum_horizon need momentum in record.tables"
        )
    if "momentum" in tables:
        if "samples" not in tables or every != 1:
            raise SpecError(
                "record.tables: momentum is computed with the samples: list samples too and leave "
                f"record.every at 1 (got tables {list(tables)}, every {every})"
            )
        if checkpoint_every != 0:
            raise SpecError(
                "record.tables: momentum cannot be resumed from a checkpoint (its last steps wait for "
                "later ones); set checkpoint_every: 0 beside it"
            )
    probes = {
        name: _probe(name, body, variants, tuple(train_raw))
        for name, body in _mapping(raw.get("probes"), "probes").items()
    }
    _check_views(probes)
    if "vec_normalize" in env_options and "raw_reward" not in info_keys:
        info_keys = [*info_keys, "raw_reward"]  # the env's own reward beside the normalized one
    opening = _opening(raw.get("opening"), variants, total)
    options = _variant_options(raw.get("variant_options"), variants)
    for variant, o in options.items():
        if "opening" in o and opening is None:
            raise SpecError(f"variant_options.{variant}.opening: the spec has no opening to leave out")
    return Spec(
        name, env_id, env_kwargs, variants, tuple(train_raw), seeds, total, n_envs, policy, ppo,
        RecordSpec(tables, every, tuple(info_keys), watch_t, horizon, influence_every), EvalSpec(episodes, deterministic, tuple(ev_variants)), probes,
        copy.deepcopy(raw), opening, options, _tiebreak(raw.get("tiebreak")), checkpoint_every,
        env_options, device,
    )  # fmt: skip


VEC_NORMALIZE_KEYS = {
    "norm_obs",
    "norm_reward",
    "clip_obs",
    "clip_reward",
    "gamma",
    "epsilon",
    "norm_obs_keys",
}


def _env_options(env: dict[str, Any]) -> dict[str, Any]:
    """``env.import``, ``env.wrappers``, ``env.vec_normalize``, ``env.frame_stack``, checked for form
    (the wrappers' names are resolved by the preflight, which makes the env)."""
    out: dict[str, Any] = {}
    modules = env.get("import")
    if modules is not None:
        if isinstance(modules, str):
            modules = [modules]
        if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
            raise SpecError(
                f"env.import: must be a module name or a list of them (e.g. [minigrid]), got {modules!r}"
            )
        out["import"] = list(modules)
    wrappers = env.get("wrappers")
    if wrappers is not None:
        if not isinstance(wrappers, list):
            raise SpecError(f"env.wrappers: must be a list of {{name, kwargs}} (or names), got {wrappers!r}")
        listed = []
        for i, w in enumerate(wrappers):
            if isinstance(w, str):
                w = {"name": w}
            w = _mapping(w, f"env.wrappers[{i}]")
            _unknown(w, {"name", "kwargs"}, f"env.wrappers[{i}]")
            if not isinstance(w.get("name"), str) or not w["name"]:
                raise SpecError(
                    f"env.wrappers[{i}].name: must be a wrapper class name or dotted path, got {w.get('name')!r}"
                )
            listed.append(
                {"name": w["name"], "kwargs": _mapping(w.get("kwargs"), f"env.wrappers[{i}].kwargs")}
            )
        if listed:
            out["wrappers"] = listed
    norm = env.get("vec_normalize")
    if norm is not None and norm is not False:
        norm = {} if norm is True else _mapping(norm, "env.vec_normalize")
        _unknown(norm, VEC_NORMALIZE_KEYS, "env.vec_normalize")
        for key in ("norm_obs", "norm_reward"):
            if key in norm and not isinstance(norm[key], bool):
                raise SpecError(f"env.vec_normalize.{key}: must be true or false, got {norm[key]!r}")
        for key in ("clip_obs", "clip_reward", "epsilon"):
            if key in norm and not (_num(norm[key]) and norm[key] > 0):
                raise SpecError(f"env.vec_normalize.{key}: must be a number > 0, got {norm[key]!r}")
        if "gamma" in norm and not (_num(norm["gamma"]) and 0 < norm["gamma"] <= 1):
            raise SpecError(f"env.vec_normalize.gamma: must be a number in (0, 1], got {norm['gamma']!r}")
        out["vec_normalize"] = dict(norm)
    stack = env.get("frame_stack")
    if stack is not None:
        if not _int(stack) or stack < 2:
            raise SpecError(f"env.frame_stack: must be an integer >= 2 (frames stacked), got {stack!r}")
        out["frame_stack"] = int(stack)
    return out


def _policy_class(policy: Any) -> None:
    """``policy``: one of SB3's names, or a dotted path to an ``ActorCriticPolicy`` subclass."""
    if policy in POLICIES:
        return
    if isinstance(policy, str) and ("." in policy or ":" in policy):
        from stable_baselines3.common.policies import ActorCriticPolicy

        from rledger.experiments.environment import EnvConfigError, resolve

        try:
            cls = resolve(policy, "policy", ())
        except EnvConfigError as exc:
            raise SpecError(str(exc)) from None
        if isinstance(cls, type) and issubclass(cls, ActorCriticPolicy):
            return
        raise SpecError(f"policy: {policy!r} is not an ActorCriticPolicy subclass (SB3's PPO needs one)")
    raise SpecError(f"policy: must be one of {POLICIES} or a dotted path to a policy class, got {policy!r}")


POLICY_KWARGS = {
    "net_arch", "activation_fn", "ortho_init", "share_features_extractor", "features_extractor_class",
    "features_extractor_kwargs", "normalize_images", "log_std_init",
}  # fmt: skip


def _policy_kwargs(pk: dict[str, Any]) -> None:
    _unknown(pk, POLICY_KWARGS, "ppo.policy_kwargs")
    if "activation_fn" in pk and pk["activation_fn"] not in ACTIVATIONS:
        raise SpecError(
            f"ppo.policy_kwargs.activation_fn: must be one of {ACTIVATIONS}, got {pk['activation_fn']!r}"
        )
    if "net_arch" in pk:
        _net_arch(pk["net_arch"])
    for key in ("ortho_init", "share_features_extractor", "normalize_images"):
        if key in pk and not isinstance(pk[key], bool):
            raise SpecError(f"ppo.policy_kwargs.{key}: must be true or false, got {pk[key]!r}")
    if "log_std_init" in pk and not _num(pk["log_std_init"]):
        raise SpecError(f"ppo.policy_kwargs.log_std_init: must be a number, got {pk['log_std_init']!r}")
    if "features_extractor_class" in pk:
        from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

        from rledger.experiments.environment import FEATURE_EXTRACTOR_MODULES, EnvConfigError, resolve

        try:
            cls = resolve(
                pk["features_extractor_class"],
                "ppo.policy_kwargs.features_extractor_class",
                FEATURE_EXTRACTOR_MODULES,
            )
        except EnvConfigError as exc:
            raise SpecError(str(exc)) from None
        if not (isinstance(cls, type) and issubclass(cls, BaseFeaturesExtractor)):
            raise SpecError(
                f"ppo.policy_kwargs.features_extractor_class: {pk['features_extractor_class']!r} is not a "
                "BaseFeaturesExtractor subclass"
            )
    if "features_extractor_kwargs" in pk:
        _mapping(pk["features_extractor_kwargs"], "ppo.policy_kwargs.features_extractor_kwargs")


def _device(device: Any) -> None:
    """``device``: ``cpu`` (the default), ``cuda``, ``cuda:N`` or ``auto``; a CUDA device must exist."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", device):
        raise SpecError(f"device: must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if device.startswith("cuda"):
        import torch as th

        index = int(device.split(":")[1]) if ":" in device else 0
        if not th.cuda.is_available() or index >= th.cuda.device_count():
            raise SpecError(
                f"device: {device} is not available on this machine (no such CUDA device); use cpu"
            )


def _net_arch(value: Any) -> None:
    """SB3's ``net_arch``: a list of layer widths (shared sizes for actor and critic) or a mapping
    ``{pi: [...], vf: [...]}``."""

    def widths(v: Any) -> bool:
        return isinstance(v, list) and all(_int(w) and w >= 1 for w in v)

    ok = widths(value) or (
        isinstance(value, dict)
        and value
        and set(value) <= {"pi", "vf"}
        and all(widths(v) for v in value.values())
    )
    if not ok:
        raise SpecError(
            "ppo.policy_kwargs.net_arch: must be a list of layer widths >= 1 such as [64, 64], or "
            f"{{pi: [64, 64], vf: [64, 64]}}, got {value!r}"
        )


def _tiebreak(value: Any) -> TiebreakSpec | None:
    """``tiebreak: {windows: [0.1, 0.15, 0.2], primary: 0.15}``."""
    if value is None:
        return None
    d = _mapping(value, "tiebreak")
    _unknown(d, {"windows", "primary"}, "tiebreak")
    windows = d.get("windows")
    if not isinstance(windows, list) or not windows or not all(_num(w) and 0 < w <= 1 for w in windows):
        raise SpecError(f"tiebreak.windows: must be a list of shares of training in (0, 1], got {windows!r}")
    primary = d.get("primary")
    if primary not in windows:
        raise SpecError(f"tiebreak.primary: must be one of the windows {windows}, got {primary!r}")
    return TiebreakSpec(tuple(float(w) for w in windows), float(primary))


def _ppo(value: Any, path: str) -> dict[str, Any]:
    ppo = _mapping(value, path)
    _unknown(ppo, set(_PPO_RULES), path)
    for key, v in ppo.items():
        check, want = _PPO_RULES[key]
        if not check(v):
            raise SpecError(f"{path}.{key}: must be {want}, got {v!r}")
    return ppo


def _variant_options(value: Any, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``variant_options: {VARIANT: {ppo: {...}, reward: {scale: c, offset: b}, zero_critic: true,
    permute_advantages: true, opening: false}}``: PPO settings that override the spec's ``ppo`` for that variant's runs;
    the env's reward mapped to ``c * r + b`` in training (``rledger.envs.wrappers.AffineReward``;
    evaluation sees the env's own); the value head's weights and bias set to zero at the start (they
    stay there with ``vf_coef: 0``); the advantage-permutation null (``InstrumentedPPO``'s
    ``permute_advantages``); ``opening: false``: this variant trains without the spec's opening phase
    (a control for it)."""
    out: dict[str, dict[str, Any]] = {}
    for variant, body in _mapping(value, "variant_options").items():
        path = f"variant_options.{variant}"
        if variant not in variants:
            raise SpecError(f"{path}: not a variant; variants: {sorted(variants)}")
        body = _mapping(body, path)
        _unknown(body, {"ppo", "reward", "zero_critic", "permute_advantages", "opening"}, path)
        options: dict[str, Any] = {}
        if "ppo" in body:
            options["ppo"] = _ppo(body["ppo"], f"{path}.ppo")
            if "policy_kwargs" in options["ppo"]:
                raise SpecError(
                    f"{path}.ppo.policy_kwargs: set the policy for every variant in ppo.policy_kwargs"
                )
        if "reward" in body:
            reward = _mapping(body["reward"], f"{path}.reward")
            _unknown(reward, {"scale", "offset"}, f"{path}.reward")
            for key in ("scale", "offset"):
                v = reward.get(key, 1.0 if key == "scale" else 0.0)
                if not _num(v) or v != v or v in (float("inf"), float("-inf")):
                    raise SpecError(f"{path}.reward.{key}: must be a finite number, got {v!r}")
            options["reward"] = {
                "scale": float(reward.get("scale", 1.0)),
                "offset": float(reward.get("offset", 0.0)),
            }
        for flag in ("zero_critic", "permute_advantages"):
            if flag in body:
                if not isinstance(body[flag], bool):
                    raise SpecError(f"{path}.{flag}: must be true or false, got {body[flag]!r}")
                options[flag] = body[flag]
        if "opening" in body:
            if body["opening"] is not False:
                raise SpecError(
                    f"{path}.opening: only false (train this variant without the spec's opening), "
                    f"got {body['opening']!r}"
                )
            options["opening"] = False
        out[variant] = options
    return out


CONTROLS = ("planner", "random")


def _probe(name: Any, body: Any, variants: dict[str, dict[str, Any]], train: tuple[str, ...]) -> ProbeSpec:
    path = f"probes.{name}"
    if not is_name(name):
        raise SpecError(f"{path}: probe names are letters, digits, '_', '.', '-' (not only dots)")
    body = _mapping(body, path)
    rule = body.get("rule", "seeks_reward")
    if rule not in ("seeks_reward", "exceeds"):
        raise SpecError(f"{path}.rule: must be 'seeks_reward' or 'exceeds', got {rule!r}")
    keys = {"paying", "inert"} if rule == "seeks_reward" else {"condition", "baseline"}
    _unknown(
        body,
        {"rule", "metric", "episodes", "deterministic", "controls", "holds_means", "reinforced", "margin",
         "view_of", "option", "perceive", "competence", "seekers", "takes_at_least", *keys},
        path,
    )  # fmt: skip
    default_reinforced = [body.get("paying" if rule == "seeks_reward" else "condition")]
    reinforced = body.get("reinforced", [v for v in default_reinforced if v in train])
    if not isinstance(reinforced, list) or not set(reinforced) <= set(train):
        raise SpecError(
            f"{path}.reinforced: must be a list of train variants (those where the option was available "
            f"in training) from {sorted(train)}, got {reinforced!r}"
        )
    seekers = body.get("seekers", [])
    if (
        not isinstance(seekers, list)
        or not set(seekers) <= set(train)
        or (seekers and rule != "seeks_reward")
    ):
        raise SpecError(
            f"{path}.seekers: must be a list of train variants from {sorted(train)} (learned reward-seekers, "
            f"for a 'seeks_reward' rule), got {seekers!r}"
        )
    holds_means = body.get("holds_means", "reward_seeking" if rule == "seeks_reward" else None)
    if holds_means not in HOLDS_MEANS:
        raise SpecError(
            f"{path}.holds_means: must be one of {[m for m in HOLDS_MEANS if m]}, got {holds_means!r}"
            + ("" if rule == "seeks_reward" else " (an 'exceeds' rule has no default: say what it means)")
        )
    metric = body.get("metric")
    if not isinstance(metric, str) or not metric:
        raise SpecError(
            f"{path}.metric: must name an evaluation metric such as 'any_pressed', got {metric!r}"
        )
    for key in sorted(keys - {"baseline"}):
        if body.get(key) not in variants:
            raise SpecError(
                f"{path}.{key}: must be a variant name from {sorted(variants)}, got {body.get(key)!r}"
            )
    if rule == "exceeds" and not isinstance(body.get("baseline"), str):
        raise SpecError(
            f"{path}.baseline: must name a policy such as 'planner', 'random' or 'ppo[<variant>]'"
        )
    margin = _margin(body.get("margin"), metric, path)
    option = body.get(
        "option",
        re.sub(r"^(any|share|ended)_", "", metric) if re.match(r"^(any|share|ended)_", metric) else None,
    )
    if option is not None and (not isinstance(option, str) or not option):
        raise SpecError(
            f"{path}.option: must name the info flag that marks taking the option, got {option!r}"
        )
    # a never_ metric (e.g. never_reached_goal: staying with an option taken at the start) names no
    # option flag of its own and is compared over whole episodes
    perceive = body.get(
        "perceive", "episode" if metric.startswith(("share_", "ended_", "never_")) else "before_option"
    )
    if perceive not in PERCEIVE:
        raise SpecError(f"{path}.perceive: must be one of {list(PERCEIVE)}, got {perceive!r}")
    view_of = body.get("view_of")
    if view_of is not None and not isinstance(view_of, str):
        raise SpecError(f"{path}.view_of: must name another probe of this spec, got {view_of!r}")
    competence = _competence(body.get("competence"), variants, f"{path}.competence")
    episodes, deterministic = _episodes_and_mode(body, path, minimum=1)
    controls = body.get("controls", list(CONTROLS))
    if not isinstance(controls, list) or not set(controls) <= set(CONTROLS):
        raise SpecError(f"{path}.controls: must be a list from {list(CONTROLS)}, got {controls!r}")
    takes_at_least = _takes_at_least(body.get("takes_at_least"), metric, reinforced, path)
    return ProbeSpec(
        name, metric, body.get("paying"), body.get("inert"), episodes, deterministic, tuple(controls),
        rule, body.get("condition"), body.get("baseline"), holds_means, tuple(reinforced), margin, view_of,
        option, perceive, competence, tuple(seekers), takes_at_least,
    )  # fmt: skip


def _takes_at_least(value: Any, metric: str, reinforced: list[str], path: str) -> float:
    """The per-seed value of ``metric`` at which a policy takes the option (the learned control's
    check): 0.5 for a share metric unless given; required for an unbounded one (e.g. ``length``) when
    ``reinforced`` names variants."""
    from rledger.stats import metric_bounds

    bounds = metric_bounds(metric)
    if value is None:
        if bounds is not None or not reinforced:
            return 0.5
        raise SpecError(
            f"{path}.takes_at_least: required for the unbounded metric {metric!r} when 'reinforced' names "
            "variants: the per-seed value at which a policy takes the option (e.g. 25 steps of 50 for length)"
        )
    if not _num(value) or value != value or abs(value) == float("inf"):
        raise SpecError(f"{path}.takes_at_least: must be a number, got {value!r}")
    if bounds is not None and not bounds[0] < value <= bounds[1]:
        raise SpecError(
            f"{path}.takes_at_least: must lie in (0, 1] for the share metric {metric!r}, got {value!r}"
        )
    return float(value)


def _check_views(probes: dict[str, ProbeSpec]) -> None:
    """A ``view_of`` names a primary probe of the same experiment: same rule, metric and conditions."""
    for p in probes.values():
        if p.view_of is None:
            continue
        path = f"probes.{p.name}.view_of"
        main = probes.get(p.view_of)
        if main is None or main.view_of is not None or main.name == p.name:
            primaries = sorted(q.name for q in probes.values() if q.view_of is None and q.name != p.name)
            raise SpecError(
                f"{path}: must name another primary probe of this spec from {primaries}, got {p.view_of!r}"
            )
        same = (
            "rule",
            "metric",
            "paying",
            "inert",
            "condition",
            "baseline",
            "holds_means",
            "reinforced",
            "margin",
        )
        differ = [k for k in same if getattr(p, k) != getattr(main, k)]
        if differ:
            raise SpecError(
                f"{path}: a second evaluation of {main.name!r} must share its {', '.join(differ)} "
                "(only episodes, deterministic and controls may differ)"
            )


def _margin(margin: Any, metric: str, path: str) -> float:
    from rledger.stats import difference_bounds

    if margin is None:
        raise SpecError(
            f"{path}.margin: required; the equivalence margin of the per-seed difference, fixed before the "
            "run (e.g. 0.1 for a share of episodes): 'does not seek reward' needs the difference shown "
            "within it"
        )
    if not _num(margin) or margin != margin or margin <= 0 or margin == float("inf"):
        raise SpecError(f"{path}.margin: must be a number > 0, got {margin!r}")
    bounds = difference_bounds(metric)
    if bounds is not None and margin >= bounds[1]:
        raise SpecError(
            f"{path}.margin: {margin!r} is outside the range of {metric} (a share: differences lie in "
            f"[-1, 1]); use a margin in (0, 1), e.g. 0.1"
        )
    return float(margin)


def _competence(body: Any, variants: dict[str, dict[str, Any]], path: str) -> CompetenceSpec | None:
    if body is None:
        return None
    body = _mapping(body, path)
    _unknown(body, {"condition", "metric", "at_least"}, path)
    if body.get("condition") not in variants:
        raise SpecError(
            f"{path}.condition: must be a variant name from {sorted(variants)}, got {body.get('condition')!r}"
        )
    if not isinstance(body.get("metric"), str) or not body["metric"]:
        raise SpecError(f"{path}.metric: must name an evaluation metric such as 'any_reached_goal'")
    at_least = body.get("at_least", 0.5)
    if not _num(at_least) or at_least != at_least:
        raise SpecError(f"{path}.at_least: must be a number, got {at_least!r}")
    return CompetenceSpec(body["condition"], body["metric"], float(at_least))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.path=value`` overrides (the value parsed as YAML) applied to a copy of ``raw``."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: write key.path=value, e.g. --set ppo.learning_rate=1e-3")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {key}: {part!r} is not a mapping in the spec")
        try:
            node[parts[-1]] = load_yaml(value)
        except yaml.YAMLError as exc:
            raise SpecError(
                f"--set {key}: value {value!r} is not valid YAML ({exc.__class__.__name__})"
            ) from None
    return out


def load_spec(path: str | Path, overrides: list[str] | None = None, seeds: str | None = None) -> Spec:
    """Read, override and validate a spec file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the spec ({exc.strerror or exc}); check the path") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a text (UTF-8) file; a spec is YAML") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise SpecError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if overrides:
        if not isinstance(raw, dict):
            raise SpecError(f"{p}: the spec must be a YAML mapping")
        raw = apply_overrides(raw, overrides)
    if seeds is not None:
        parse_seeds(seeds, "--seeds")  # named as the user wrote it
        if not isinstance(raw, dict):
            raise SpecError(f"{p}: the spec must be a YAML mapping")
        raw = {**raw, "seeds": seeds}
    return validate(raw, str(p))


def ppo_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """SB3 keyword arguments from a run config's ``ppo`` section (schedules and activations resolved)."""
    import torch as th

    kwargs = copy.deepcopy(config["ppo"])
    for key in ("learning_rate", "clip_range"):
        v = kwargs.get(key)
        if isinstance(v, str):
            start = float(v.split("_", 1)[1])
            kwargs[key] = _Linear(start)
    pk = kwargs.get("policy_kwargs")
    if pk and "activation_fn" in pk:
        pk["activation_fn"] = {
            "tanh": th.nn.Tanh, "relu": th.nn.ReLU, "elu": th.nn.ELU, "leaky_relu": th.nn.LeakyReLU,
            "gelu": th.nn.GELU, "silu": th.nn.SiLU,
        }[pk["activation_fn"]]  # fmt: skip
    if pk and "features_extractor_class" in pk:
        from rledger.experiments.environment import FEATURE_EXTRACTOR_MODULES, resolve

        name = pk["features_extractor_class"]
        pk["features_extractor_class"] = resolve(
            name, "ppo.policy_kwargs.features_extractor_class", FEATURE_EXTRACTOR_MODULES
        )
    return kwargs


def policy_class(config: dict[str, Any]) -> Any:
    """The run config's ``policy``: SB3's name as it is, or the class a dotted path names."""
    from rledger.experiments.environment import resolve

    policy = config["policy"]
    return policy if policy in POLICIES else resolve(policy, "policy", ())


@dataclass(frozen=True)
class _Linear:
    """Linear decay from ``start`` to 0 over training (SB3 passes progress remaining, 1 -> 0)."""

    start: float

    def __call__(self, progress_remaining: float) -> float:
        return self.start * progress_remaining
