"""What the per-sample engine supports, which path a policy takes, and the error a user sees otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from rledger.persample.gram import LayerCapture

_REFUSED_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.RNNBase, nn.GroupNorm)
ACTION_SPACES = (spaces.Discrete, spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)


class UnsupportedPolicyError(ValueError):
    """The policy or optimizer cannot be instrumented exactly."""


def check_action_space(space: spaces.Space) -> None:
    if not isinstance(space, ACTION_SPACES):
        raise UnsupportedPolicyError(
            f"action space {space} is not supported; use Discrete, Box, MultiDiscrete or MultiBinary"
        )


def check_policy(policy: nn.Module) -> None:
    """Refuse policies whose per-sample losses are not independent, or that are recurrent."""
    if not isinstance(policy, ActorCriticPolicy):
        raise UnsupportedPolicyError(
            f"InstrumentedPPO needs an SB3 ActorCriticPolicy, got {type(policy).__name__}"
        )
    if hasattr(policy, "lstm_actor") or "Recurrent" in type(policy).__name__:
        raise UnsupportedPolicyError(
            f"{type(policy).__name__} is recurrent; InstrumentedPPO supports feed-forward policies only"
        )
    for name, module in policy.named_modules():
        if isinstance(module, _REFUSED_MODULES):
            raise UnsupportedPolicyError(
                f"policy module {name!r} is a {type(module).__name__}: it couples samples or draws random "
                "numbers, so per-sample gradients would be undefined or training would change; remove it"
            )
    if getattr(policy, "use_sde", False):
        raise UnsupportedPolicyError(
            "use_sde=True (gSDE) is not supported by InstrumentedPPO yet; use the default Gaussian policy"
        )


def check_optimizer(optimizer: th.optim.Optimizer) -> None:
    if isinstance(optimizer, th.optim.Adam | th.optim.AdamW):
        for g in optimizer.param_groups:
            if g.get("amsgrad") or g.get("maximize"):
                raise UnsupportedPolicyError(
                    "optimizer: Adam with amsgrad or maximize is not supported; use plain Adam/AdamW"
                )
        return
    if isinstance(optimizer, th.optim.SGD):
        for g in optimizer.param_groups:
            if g.get("momentum") or g.get("maximize"):
                raise UnsupportedPolicyError(
                    "optimizer: SGD is supported without momentum only (momentum=0); use Adam for momentum"
                )
        return
    raise UnsupportedPolicyError(
        f"optimizer {type(optimizer).__name__} is not supported: the samples table needs Adam, AdamW or SGD "
        "(policy_kwargs=dict(optimizer_class=th.optim.Adam))"
    )


def is_adam(optimizer: th.optim.Optimizer) -> bool:
    return isinstance(optimizer, th.optim.Adam | th.optim.AdamW)


def batched_supported(optimizer: th.optim.Optimizer) -> bool:
    """The batched mode (slot buffers, replay) takes Adam/AdamW with one parameter group; else the
    per-minibatch extra-backward mode runs."""
    return is_adam(optimizer) and len(optimizer.param_groups) == 1


def linear_modules(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def layer_modules(module: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """The Linear and Conv2d layers, whose per-sample columns come from their inputs and output
    gradients (:mod:`rledger.persample.gram`)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


def trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def params_outside(module: nn.Module, owners: Iterable[nn.Module]) -> list[str]:
    """Names of trainable parameters of ``module`` not owned by any module in ``owners``."""
    owned = {id(p) for m in owners for p in m.parameters(recurse=False)}
    return [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in owned]


def choose_path(policy: ActorCriticPolicy, gaussian: bool, dummy: tuple[Any, Tensor]) -> str:
    """``"linear"`` when every trainable parameter lives in an ``nn.Linear`` called once per forward on
    ``(B, in)`` inputs (plus a Gaussian ``log_std``); ``"conv"`` when some live in ``nn.Conv2d``
    layers (one group, called once per forward on ``(B, C, H, W)`` inputs) and the rest so; else
    ``"generic"``."""
    layers = layer_modules(policy)
    outside = params_outside(policy, layers.values())
    allowed = {"log_std"} if gaussian else set()
    if set(outside) - allowed:
        return "generic"
    if any(isinstance(m, nn.Conv2d) and m.groups != 1 for m in layers.values()):
        return "generic"
    with LayerCapture(layers) as cap, th.no_grad():
        policy.evaluate_actions(*dummy)
    names = [c.name for c in cap.calls]
    if len(names) != len(set(names)):
        return "generic"
    for c in cap.calls:
        if c.inputs.dim() != (4 if isinstance(c.module, nn.Conv2d) else 2):
            return "generic"
    return "conv" if any(isinstance(c.module, nn.Conv2d) for c in cap.calls) else "linear"


def dummy_batch(policy: ActorCriticPolicy, action_space: spaces.Space, n: int) -> tuple[Any, Tensor]:
    """``n`` all-zero observations and actions, as train() feeds them to the policy."""
    space = policy.observation_space
    if isinstance(space, spaces.Dict):
        obs_np: Any = {k: np.zeros((n, *s.shape), dtype=s.dtype) for k, s in space.spaces.items()}
    else:
        obs_np = np.zeros((n, *space.shape), dtype=space.dtype)
    obs, _ = policy.obs_to_tensor(obs_np)
    if isinstance(action_space, spaces.Discrete):
        act = th.zeros(n, dtype=th.long, device=policy.device)
    else:
        act = th.zeros((n, *action_space.shape), dtype=th.float32, device=policy.device)
        if isinstance(action_space, spaces.MultiDiscrete | spaces.MultiBinary):
            act = act.reshape(n, -1)
    return obs, act
