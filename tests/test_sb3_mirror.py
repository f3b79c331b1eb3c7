"""``InstrumentedPPO.train`` and ``collect_rollouts`` against stable-baselines3's installed source.

Every statement of SB3's ``PPO.train`` / ``OnPolicyAlgorithm.collect_rollouts`` must be in rledger's
mirror, in order and nested as in SB3; every other statement must be one of the named insertions
below, and the only changed statement is ``clip_grad_norm_``'s result kept (SB3 discards it). On a
mismatch the test prints the problems and a unified diff of the two functions.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import inspect
import textwrap

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from rledger import InstrumentedPPO

INSERTIONS = {
    "train": {
        "start": "self._recorder.start_train(self)",
        "null": "self._permute_rollout_advantages()",  # the advantage-permutation null, off by default
        "minibatch": (
            "self._recorder.minibatch(epoch, approx_kl_div, pg_losses[-1], value_losses[-1], "
            "entropy_losses[-1], clip_fraction, len(advantages))"
        ),
        "stopped_early": "self._recorder.stopped_early()",
        "before_step": (
            "self._recorder.before_step(rollout_data, actions, log_prob, entropy, values, advantages, "
            "ratio, clip_range, clip_range_vf if self.clip_range_vf is not None else None)"
        ),
        "after_step": "self._recorder.after_step(grad_norm)",
        "end": "self._recorder.end_train(self.logger)",
    },
    "collect_rollouts": {
        "start": "self._recorder.start_rollout(n_rollout_steps, env.num_envs)",
        "env_step": "self._recorder.env_step(n_steps, env, rewards, dones, infos)",
        "stopped": "self._recorder.end_rollout(rollout_buffer, complete=False)",
        "end": "self._recorder.end_rollout(rollout_buffer, complete=True)",
    },
}
# SB3 statements whose discarded value the mirror keeps: name -> SB3's statement
CAPTURES = {
    "train": {"grad_norm": "th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)"},
    "collect_rollouts": {},
}
SB3 = {"train": PPO.train, "collect_rollouts": OnPolicyAlgorithm.collect_rollouts}
_BODIES = ("body", "orelse", "finalbody", "handlers")


def _function(fn) -> ast.FunctionDef:  # noqa: ANN001
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


@functools.cache
def _sb3(name: str) -> ast.FunctionDef:
    return _function(SB3[name])


def _dump(node: ast.AST) -> str:
    return ast.dump(node, annotate_fields=False, include_attributes=False)


def _shell(node: ast.stmt) -> str:
    """A statement without the statements nested in it (compound statements' headers)."""
    bare = copy.copy(node)
    for field in _BODIES:
        if hasattr(bare, field):
            setattr(bare, field, [])
    return _dump(bare)


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return body[1:]
    return body


def compare(sb3: list[ast.stmt], ours: list[ast.stmt], name: str, where: str = "") -> list[str]:
    """Problems of ``ours`` against ``sb3`` (one block of statements, recursively)."""
    inserted = {_dump(ast.parse(src).body[0]) for src in INSERTIONS[name].values()}
    captures = {
        _dump(ast.parse(f"{var} = {src}").body[0]): _dump(ast.parse(src).body[0])
        for var, src in CAPTURES[name].items()
    }
    problems: list[str] = []

    def matches(node: ast.stmt, theirs: ast.stmt) -> bool:
        return _shell(node) == _shell(theirs) or captures.get(_dump(node)) == _dump(theirs)

    i = 0
    for node in ours:
        if not (i < len(sb3) and matches(node, sb3[i])):
            if _dump(node) in inserted:
                continue
            later = next((j for j in range(i + 1, len(sb3)) if matches(node, sb3[j])), None)
            if later is None:
                line = ast.unparse(node).splitlines()[0]
                problems.append(
                    f"line {node.lineno}: neither an SB3 statement (here) nor a named insertion: {line}"
                )
                continue
            problems += [
                f"SB3 statement missing before line {node.lineno}: {ast.unparse(s)}" for s in sb3[i:later]
            ]
            i = later
        if _shell(node) == _shell(sb3[i]):
            for field in _BODIES:
                if field == "handlers":
                    pairs = zip(getattr(sb3[i], field, []), getattr(node, field, []), strict=False)
                    for h_sb3, h_ours in pairs:
                        problems += compare(h_sb3.body, h_ours.body, name, f"{where}{field}/")
                elif hasattr(node, field):
                    problems += compare(
                        getattr(sb3[i], field), getattr(node, field), name, f"{where}{field}/"
                    )
        i += 1
    problems += [f"SB3 statement missing at the end of a block: {ast.unparse(s)}" for s in sb3[i:]]
    return problems


def mirror_problems(name: str, ours: ast.FunctionDef | None = None) -> list[str]:
    sb3 = _sb3(name)
    ours = ours or _function(getattr(InstrumentedPPO, name))
    problems = []
    if _dump(sb3.args) != _dump(ours.args):
        problems.append(f"signature differs: ({ast.unparse(sb3.args)}) vs ({ast.unparse(ours.args)})")
    problems += compare(_without_docstring(sb3.body), _without_docstring(ours.body), name)
    return problems


def _report(name: str, problems: list[str]) -> str:
    a = ast.unparse(_function(SB3[name])).splitlines()
    b = ast.unparse(_function(getattr(InstrumentedPPO, name))).splitlines()
    diff = "\n".join(difflib.unified_diff(a, b, "stable_baselines3", "rledger", lineterm=""))
    return "\n".join(problems) + "\n\n" + diff


@pytest.mark.parametrize("name", list(SB3))
def test_mirror_holds_every_sb3_statement_in_order(name):
    problems = mirror_problems(name)
    assert not problems, _report(name, problems)


@pytest.mark.parametrize("name", list(SB3))
def test_every_named_insertion_is_used(name):
    """The lists above name only what the mirror holds (a stale entry would hide nothing, but mislead)."""
    ours = {_dump(n) for n in ast.walk(_function(getattr(InstrumentedPPO, name))) if isinstance(n, ast.stmt)}
    for label, src in INSERTIONS[name].items():
        assert _dump(ast.parse(src).body[0]) in ours, f"insertion {label!r} is not in the mirror"


def _blocks(fn: ast.FunctionDef) -> list[list[ast.stmt]]:
    """Every block of statements in ``fn``, in a fixed order (the same for a deep copy)."""
    return [
        block
        for node in ast.walk(fn)
        for field in ("body", "orelse", "finalbody")
        if isinstance(block := getattr(node, field, None), list) and block
    ]


def _mutants(fn: ast.FunctionDef):  # noqa: ANN202
    """``fn`` with one SB3 statement deleted, or two adjacent different SB3 statements swapped, for
    every statement of every block."""
    inserted = {_dump(ast.parse(src).body[0]) for table in INSERTIONS.values() for src in table.values()}
    for b, block in enumerate(_blocks(fn)):
        own = [j for j, s in enumerate(block) if _dump(s) not in inserted]
        for j in own:
            mutant = copy.deepcopy(fn)
            del _blocks(mutant)[b][j]
            yield f"delete {ast.unparse(block[j]).splitlines()[0]!r}", mutant
        for x, y in zip(own, own[1:], strict=False):
            if y == x + 1 and _dump(block[x]) != _dump(block[y]):
                mutant = copy.deepcopy(fn)
                target = _blocks(mutant)[b]
                target[x], target[y] = target[y], target[x]
                yield f"swap {ast.unparse(block[x]).splitlines()[0]!r} and the next", mutant


@pytest.mark.parametrize("name", list(SB3))
def test_check_fails_when_a_statement_is_deleted_or_reordered(name):
    """The check can fail: every mutant of the mirror, one SB3 statement deleted or two swapped, at
    every depth, is reported."""
    fn = _function(getattr(InstrumentedPPO, name))
    fn.body = _without_docstring(fn.body)
    mutants = list(_mutants(fn))
    assert len(mutants) > 50
    missed = [label for label, mutant in mutants if not mirror_problems(name, mutant)]
    assert not missed, missed
