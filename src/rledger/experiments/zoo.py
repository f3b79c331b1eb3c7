"""An rl-baselines3-zoo PPO hyperparameter entry (``hyperparams/ppo.yml``) as an rledger spec.

The zoo's keys map onto the spec's: ``n_envs``, ``n_timesteps`` (-> ``total_timesteps``), ``policy``,
``env_wrapper`` (-> ``env.wrappers``), ``normalize`` and ``normalize_kwargs`` (-> ``env.vec_normalize``),
``frame_stack``, ``env_kwargs``, and PPO's own arguments (``lin_<x>`` schedules included). The
``policy_kwargs`` string (``"dict(ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[64],
vf=[64]))"``) is parsed as data, never evaluated: ``dict(...)`` calls, literals, and activation classes
such as ``nn.ReLU``. A key the spec cannot express (``use_sde``, ``callback``, a custom optimizer, ...)
is an error naming it, not dropped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from rledger.experiments.spec import ACTIVATIONS, SpecError, load_yaml, validate

PPO_KEYS = {
    "learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "clip_range_vf",
    "normalize_advantage", "ent_coef", "vf_coef", "max_grad_norm", "target_kl",
}  # fmt: skip
ACTIVATION_CLASSES = {"Tanh": "tanh", "ReLU": "relu", "ELU": "elu", "LeakyReLU": "leaky_relu", "GELU": "gelu",
                      "SiLU": "silu"}  # fmt: skip


def _literal(node: ast.AST, where: str) -> Any:
    """A policy_kwargs value: constants, lists, tuples, dict literals, ``dict(k=v)`` calls and
    activation classes (``nn.ReLU``, ``th.nn.Tanh``)."""
    if isinstance(node, ast.Constant):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
    ):
        return -node.operand.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e, where) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k, where): _literal(v, where) for k, v in zip(node.keys, node.values, strict=True)}
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        return {kw.arg: _literal(kw.value, f"{where}.{kw.arg}") for kw in node.keywords}
    if isinstance(node, ast.Attribute) and node.attr in ACTIVATION_CLASSES:
        return ACTIVATION_CLASSES[node.attr]
    raise SpecError(
        f"{where}: {ast.unparse(node)!r} cannot be read as data (rledger never evaluates the zoo's Python "
        f"strings); write it into the spec by hand"
    )


def policy_kwargs(text: str, where: str) -> dict[str, Any]:
    """The zoo's ``policy_kwargs`` string as a mapping, with activation classes as the spec's names."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise SpecError(f"{where}: not a Python expression: {text!r}") from None
    value = _literal(tree.body, where)
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be dict(...), got {text!r}")
    if "activation_fn" in value and value["activation_fn"] not in ACTIVATIONS:
        raise SpecError(f"{where}.activation_fn: {value['activation_fn']!r} is not one of {ACTIVATIONS}")
    return value


def _wrappers(value: Any, where: str) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    out = []
    for i, w in enumerate(items):
        if isinstance(w, str):
            out.append({"name": w, "kwargs": {}})
        elif isinstance(w, dict) and len(w) == 1:
            ((name, kwargs),) = w.items()
            out.append({"name": name, "kwargs": dict(kwargs or {})})
        else:
            raise SpecError(
                f"{where}[{i}]: must be a wrapper's dotted path or {{path: {{kwargs}}}}, got {w!r}"
            )
    return out


def spec_from_zoo(
    path: str | Path, env_id: str, modules: list[str] | None = None, name: str | None = None
) -> dict[str, Any]:
    """The spec (a mapping, validated) of the zoo file's entry for ``env_id``; ``modules``: the
    spec's ``env.import``."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"{path}: cannot be read ({exc.__class__.__name__}); pass a zoo hyperparameter file"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a YAML error
        raise SpecError(f"{path}: not YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: not a zoo hyperparameter file (a mapping of env ids)")
    if env_id not in raw:
        raise SpecError(f"{path}: no entry for {env_id!r}; entries: {', '.join(sorted(map(str, raw))[:20])}")
    entry = dict(raw[env_id] or {})
    where = f"{path}:{env_id}"
    env: dict[str, Any] = {"id": env_id}
    if modules:
        env["import"] = list(modules)
    spec: dict[str, Any] = {
        "name": name or re.sub(r"[^A-Za-z0-9_.-]", "_", f"zoo_{env_id}"),
        "env": env,
        "seeds": [0],
    }
    ppo: dict[str, Any] = {}
    norm: dict[str, Any] | None = None
    for key, value in entry.items():
        if key == "n_timesteps":
            spec["total_timesteps"] = int(float(value))
        elif key == "n_envs":
            spec["n_envs"] = int(value)
        elif key == "policy":
            spec["policy"] = value
        elif key == "env_kwargs":
            env["kwargs"] = dict(value or {})
        elif key == "env_wrapper":
            env["wrappers"] = _wrappers(value, f"{where}.env_wrapper")
        elif key == "frame_stack":
            env["frame_stack"] = int(value)
        elif key == "normalize":
            if isinstance(value, str):
                parsed = policy_kwargs(value, f"{where}.normalize")
                norm = {**(norm or {}), **parsed}
            elif value:
                norm = norm or {}
        elif key == "normalize_kwargs":
            norm = {**(norm or {}), **dict(value or {})}
        elif key == "policy_kwargs":
            ppo["policy_kwargs"] = (
                policy_kwargs(value, f"{where}.policy_kwargs") if isinstance(value, str) else value
            )
        elif key in PPO_KEYS:
            ppo[key] = value
        else:
            raise SpecError(
                f"{where}.{key}: the spec has no equivalent of this zoo key; remove it or write the spec by hand"
            )
    if norm is not None:
        env["vec_normalize"] = norm
    if ppo:
        spec["ppo"] = ppo
    spec.setdefault("total_timesteps", 100_000)
    validate(spec, where)  # the spec's own rules, naming the field
    return spec
