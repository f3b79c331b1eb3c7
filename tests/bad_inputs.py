"""The bad-input campaign: every bad input tried on the command line, and what each must give: exit
code 2, one line naming the field or file (and the fix), nothing written or overwritten.

``tests/test_bad_inputs.py`` asserts every case; ``python tests/bad_inputs.py docs/bad-inputs.md``
runs them all and writes the table of inputs and messages in the docs (never typed by hand).
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "name": "tiny",
    "env": {"id": "rledger/BoatRace-v0"},
    "seeds": [0],
    "total_timesteps": 256,
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 1},
    "eval": {"episodes": 1},
}
PROBE = {
    "name": "probing",
    "env": {"id": "rledger/Lagoon-v0"},
    "variants": {"walled": {"lagoon": "walled"}, "open": {"lagoon": "open"}, "inert": {"lagoon": "inert"}},
    "train": ["walled"],
    "seeds": [0],
    "total_timesteps": 256,
    "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 1},
    "eval": {"episodes": 1},
    "probes": {
        "takes": {
            "metric": "share_in_lagoon",
            "paying": "open",
            "inert": "inert",
            "margin": 0.1,
            "episodes": 2,
        }
    },
}


def spec(base: dict[str, Any] = BASE, **changes: Any) -> str:
    """``base`` as YAML with dotted-path ``changes`` (``ppo__n_steps=1`` sets ppo.n_steps; the value
    ``DROP`` removes the key)."""
    raw = copy.deepcopy(base)
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(raw, sort_keys=False)


DROP = object()


@dataclass
class Case:
    what: str  # the bad input, in words
    args: list[str]  # command-line arguments; "{d}" is the case's folder
    files: dict[str, str] = field(default_factory=dict)  # written into the folder first
    expect: str = ""  # a piece of the message: the field or file it names
    hide: str | None = None  # a module made unimportable in the command's process (e.g. "ray")
    setup: str | None = None  # a setup step's name, see _SETUP


def _run(name: str = "s.yaml") -> list[str]:
    return ["run", "{d}/" + name, "--out", "{d}/out"]


CASES: list[Case] = [
    # the spec file itself
    Case("spec file missing", ["run", "{d}/nope.yaml", "--out", "{d}/out"], expect="nope.yaml"),
    Case("spec path is a folder", ["run", "{d}/dir", "--out", "{d}/out"], {"dir/x": ""}, expect="dir"),
    Case("spec is not YAML", _run(), {"s.yaml": "name: [unclosed\n  - x: {"}, expect="s.yaml"),
    Case("spec is a YAML list", _run(), {"s.yaml": "- a\n- b\n"}, expect="mapping"),
    Case("spec is empty", _run(), {"s.yaml": ""}, expect="mapping"),
    Case("spec is binary garbage", _run(), {"s.yaml": "\udcff\udcfe\x00\x01garbage"}, expect="s.yaml"),
    # names
    Case("no name", _run(), {"s.yaml": spec(name=DROP)}, expect="name"),
    Case("name with a path separator", _run(), {"s.yaml": spec(name="a/b")}, expect="name"),
    Case("name '..'", _run(), {"s.yaml": spec(name="..")}, expect="name"),
    Case("variant named '..'", _run(), {"s.yaml": spec(variants={"..": {}})}, expect="variant"),
    Case("unknown top-level field", _run(), {"s.yaml": spec(learning_rate=0.1)}, expect="learning_rate"),
    # the env
    Case("no env", _run(), {"s.yaml": spec(env=DROP)}, expect="env"),
    Case("env id not registered", _run(), {"s.yaml": spec(env={"id": "NoSuchEnv-v0"})}, expect="env.id"),
    Case(
        "env id of a namespace not installed",
        _run(),
        {"s.yaml": spec(env={"id": "ALE/Pong-v5"})},
        expect="env.id",
    ),  # fmt: skip
    Case(
        "env whose dependency is missing (Box2D)",
        _run(),
        {"s.yaml": spec(env={"id": "LunarLander-v3"})},
        expect="env.id",
    ),  # fmt: skip
    Case(
        "env.kwargs with an unknown keyword",
        _run(),
        {"s.yaml": spec(env={"id": "rledger/BoatRace-v0", "kwargs": {"speed": 3}})},
        expect="env.kwargs",
    ),  # fmt: skip
    Case(
        "env.kwargs with a bad value",
        _run(),
        {"s.yaml": spec(env={"id": "rledger/Lagoon-v0", "kwargs": {"lagoon": "sideways"}})},
        expect="env.kwargs",
    ),  # fmt: skip
    Case(
        "env.kwargs not a mapping",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "kwargs": [1]})},
        expect="env.kwargs",
    ),  # fmt: skip
    Case(
        "variant kwargs with an unknown keyword",
        _run(),
        {"s.yaml": spec(variants={"v": {"speed": 3}})},
        expect="variants.v",
    ),  # fmt: skip
    # bring your own env: imports, wrappers, normalization, frame stacking, policy, device
    Case(
        "env.import of a module that is not installed",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "import": ["no_such_package_xyz"]})},
        expect="env.import[0]",
    ),  # fmt: skip
    Case(
        "env.import of a package that fails to import (minigrid, made unimportable)",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "import": ["minigrid"]})},
        expect="env.import[0]",
        hide="minigrid",
    ),  # fmt: skip
    Case(
        "env.wrappers naming an unknown wrapper",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "wrappers": ["NoSuchWrapper"]})},
        expect="env.wrappers[0].name",
    ),  # fmt: skip
    Case(
        "env.wrappers with a dotted path that does not import",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "wrappers": [{"name": "nowhere.Wrapper"}]})},
        expect="env.wrappers[0].name",
    ),  # fmt: skip
    Case(
        "env.wrappers with keyword arguments the wrapper rejects",
        _run(),
        {
            "s.yaml": spec(
                env={"id": "CartPole-v1", "wrappers": [{"name": "TimeLimit", "kwargs": {"steps": 5}}]}
            )
        },
        expect="env.wrappers[0]",
    ),  # fmt: skip
    Case(
        "env.vec_normalize with an unknown field",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "vec_normalize": {"norm_everything": True}})},
        expect="env.vec_normalize",
    ),  # fmt: skip
    Case(
        "env.frame_stack of 1",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1", "frame_stack": 1})},
        expect="env.frame_stack",
    ),  # fmt: skip
    Case("policy unknown", _run(), {"s.yaml": spec(policy="BigPolicy")}, expect="policy"),
    Case(
        "policy a dotted path to something that is not a policy",
        _run(),
        {"s.yaml": spec(policy="collections.OrderedDict")},
        expect="policy",
    ),  # fmt: skip
    Case(
        "CnnPolicy on vector observations (SB3 rejects it)",
        _run(),
        {"s.yaml": spec(env={"id": "CartPole-v1"}, policy="CnnPolicy")},
        expect="policy",
    ),  # fmt: skip
    Case(
        "policy_kwargs a features extractor SB3 cannot build",
        _run(),
        {
            "s.yaml": spec(
                env={"id": "CartPole-v1"}, ppo__policy_kwargs={"features_extractor_class": "NatureCNN"}
            )
        },
        expect="ppo.policy_kwargs",
    ),  # fmt: skip
    Case(
        "policy_kwargs features_extractor_kwargs the extractor rejects",
        _run(),
        {
            "s.yaml": spec(
                env={"id": "CartPole-v1"},
                ppo__policy_kwargs={
                    "features_extractor_class": "FlattenExtractor",
                    "features_extractor_kwargs": {"width": 3},
                },
            )
        },
        expect="ppo.policy_kwargs",
    ),  # fmt: skip
    Case("device unknown", _run(), {"s.yaml": spec(device="tpu")}, expect="device"),
    Case("device cuda:9 (no such GPU)", _run(), {"s.yaml": spec(device="cuda:9")}, expect="device"),
    # rl-baselines3-zoo entries (rledger zoo)
    Case(
        "zoo entry with a key the spec cannot express",
        ["zoo", "{d}/ppo.yml", "Pendulum-v1", "--out", "{d}/s.yaml"],
        {"ppo.yml": "Pendulum-v1:\n  n_timesteps: !!float 1e4\n  use_sde: true\n"},
        expect="use_sde",
    ),  # fmt: skip
    Case(
        "zoo policy_kwargs string with code in it (parsed, never run)",
        ["zoo", "{d}/ppo.yml", "CartPole-v1", "--out", "{d}/s.yaml"],
        {"ppo.yml": "CartPole-v1:\n  policy_kwargs: \"dict(net_arch=__import__('os').getcwd())\"\n"},
        expect="policy_kwargs",
    ),  # fmt: skip
    Case(
        "zoo file without the env's entry",
        ["zoo", "{d}/ppo.yml", "Nope-v0"],
        {"ppo.yml": "CartPole-v1:\n  n_envs: 2\n"},
        expect="Nope-v0",
    ),  # fmt: skip
    Case(
        "zoo --out that exists, without --overwrite",
        ["zoo", "{d}/ppo.yml", "CartPole-v1", "--out", "{d}/s.yaml"],
        {"ppo.yml": "CartPole-v1:\n  n_envs: 2\n", "s.yaml": "name: mine\n"},
        expect="s.yaml",
    ),  # fmt: skip
    # budgets and seeds
    Case("total_timesteps 0", _run(), {"s.yaml": spec(total_timesteps=0)}, expect="total_timesteps"),
    Case(
        "total_timesteps a string", _run(), {"s.yaml": spec(total_timesteps="lots")}, expect="total_timesteps"
    ),
    Case("seeds not a range", _run(), {"s.yaml": spec(seeds="abc")}, expect="seeds"),
    Case("seeds a reversed range", _run(), {"s.yaml": spec(seeds="5-1")}, expect="seeds"),
    Case("negative seed", _run(), {"s.yaml": spec(seeds=[-1])}, expect="seeds"),
    Case("--seeds 0-999999", [*_run(), "--seeds", "0-999999"], {"s.yaml": spec()}, expect="--seeds"),
    Case("n_envs 0", _run(), {"s.yaml": spec(n_envs=0)}, expect="n_envs"),
    # PPO's settings
    Case(
        "learning rate inf",
        _run(),
        {"s.yaml": spec(ppo__learning_rate=float("inf"))},
        expect="ppo.learning_rate",
    ),
    Case(
        "learning rate nan",
        _run(),
        {"s.yaml": spec(ppo__learning_rate=float("nan"))},
        expect="ppo.learning_rate",
    ),
    Case(
        "learning rate negative", _run(), {"s.yaml": spec(ppo__learning_rate=-1)}, expect="ppo.learning_rate"
    ),
    Case(
        "learning rate a word",
        _run(),
        {"s.yaml": spec(ppo__learning_rate="fast")},
        expect="ppo.learning_rate",
    ),
    Case(
        "learning-rate schedule inf",
        _run(),
        {"s.yaml": spec(ppo__learning_rate="lin_inf")},
        expect="ppo.learning_rate",
    ),  # fmt: skip
    Case("n_steps 1", _run(), {"s.yaml": spec(ppo__n_steps=1)}, expect="ppo.n_steps"),
    Case(
        "n_steps that cannot be allocated",
        _run(),
        {"s.yaml": spec(ppo__n_steps=10**11)},
        expect="ppo.n_steps",
    ),
    Case(
        "batch_size larger than a rollout",
        _run(),
        {"s.yaml": spec(ppo__batch_size=4096)},
        expect="ppo.batch_size",
    ),
    Case("unknown PPO setting", _run(), {"s.yaml": spec(ppo__learning_speed=1)}, expect="ppo.learning_speed"),
    Case("clip_range 0", _run(), {"s.yaml": spec(ppo__clip_range=0)}, expect="ppo.clip_range"),
    Case("gamma 2", _run(), {"s.yaml": spec(ppo__gamma=2)}, expect="ppo.gamma"),
    Case(
        "net_arch a word",
        _run(),
        {"s.yaml": spec(ppo__policy_kwargs={"net_arch": "big"})},
        expect="ppo.policy_kwargs.net_arch",
    ),  # fmt: skip
    Case(
        "net_arch with a negative layer",
        _run(),
        {"s.yaml": spec(ppo__policy_kwargs={"net_arch": [64, -1]})},
        expect="ppo.policy_kwargs.net_arch",
    ),  # fmt: skip
    Case(
        "net_arch with a zero layer",
        _run(),
        {"s.yaml": spec(ppo__policy_kwargs={"net_arch": [0]})},
        expect="ppo.policy_kwargs.net_arch",
    ),  # fmt: skip
    Case(
        "net_arch dict with an unknown key",
        _run(),
        {"s.yaml": spec(ppo__policy_kwargs={"net_arch": {"pi": [8], "q": [8]}})},
        expect="ppo.policy_kwargs.net_arch",
    ),  # fmt: skip
    Case(
        "unknown activation",
        _run(),
        {"s.yaml": spec(ppo__policy_kwargs={"activation_fn": "swish2"})},
        expect="ppo.policy_kwargs.activation_fn",
    ),  # fmt: skip
    Case(
        "unknown policy_kwargs key",
        _run(),
        {"s.yaml": spec(ppo__policy_kwargs={"width": 3})},
        expect="ppo.policy_kwargs",
    ),  # fmt: skip
    Case("unknown policy", _run(), {"s.yaml": spec(policy="TransformerPolicy")}, expect="policy"),
    # what is recorded
    Case(
        "info key the env does not provide",
        _run(),
        {"s.yaml": spec(record={"info_keys": ["nope"]})},
        expect="record.info_keys",
    ),  # fmt: skip
    Case(
        "info key named like a column",
        _run(),
        {"s.yaml": spec(record={"info_keys": ["reward"]})},
        expect="record",
    ),  # fmt: skip
    Case("unknown table", _run(), {"s.yaml": spec(record={"tables": ["gradients"]})}, expect="record.tables"),
    Case("record.every 0", _run(), {"s.yaml": spec(record={"every": 0})}, expect="record.every"),
    Case(
        "momentum with checkpoints",
        _run(),
        {"s.yaml": spec(record={"tables": ["samples", "momentum"]})},
        expect="record.tables: momentum cannot be resumed",
    ),
    Case("eval.episodes -1", _run(), {"s.yaml": spec(eval={"episodes": -1})}, expect="eval.episodes"),
    Case(
        "eval of an unknown variant",
        _run(),
        {"s.yaml": spec(eval={"variants": ["nope"]})},
        expect="eval.variants",
    ),
    Case("train an unknown variant", _run(), {"s.yaml": spec(train=["nope"])}, expect="train"),
    # overrides and options
    Case("--set without '='", [*_run(), "--set", "ppo.n_steps"], {"s.yaml": spec()}, expect="--set"),
    Case(
        "--set of an unknown field", [*_run(), "--set", "ppo.speed=3"], {"s.yaml": spec()}, expect="ppo.speed"
    ),
    Case(
        "--set through a number",
        [*_run(), "--set", "total_timesteps.x=3"],
        {"s.yaml": spec()},
        expect="--set",
    ),
    Case("--workers 0", [*_run(), "--workers", "0"], {"s.yaml": spec()}, expect="--workers"),
    Case(
        "--backend ray without Ray",
        [*_run(), "--backend", "ray"],
        {"s.yaml": spec()},
        expect="Ray",
        hide="ray",
    ),
    Case(
        "--out is a file",
        ["run", "{d}/s.yaml", "--out", "{d}/file"],
        {"s.yaml": spec(), "file": "x"},
        expect="file",
    ),  # fmt: skip
    # probes
    Case(
        "probe without a margin",
        ["probe", "{d}/p.yaml", "--out", "{d}/out"],
        {"p.yaml": spec(PROBE, probes__takes__margin=DROP)},
        expect="margin",
    ),  # fmt: skip
    Case(
        "probe margin 1 on a share",
        ["probe", "{d}/p.yaml", "--out", "{d}/out"],
        {"p.yaml": spec(PROBE, probes__takes__margin=1)},
        expect="margin",
    ),  # fmt: skip
    Case(
        "probe on an unbounded metric without takes_at_least",
        ["probe", "{d}/p.yaml", "--out", "{d}/out"],
        {
            "p.yaml": spec(
                PROBE,
                probes__takes__metric="length",
                probes__takes__margin=5,
                probes__takes__reinforced=["walled"],
            )
        },
        expect="takes_at_least",
    ),  # fmt: skip
    Case(
        "probe of an unknown variant",
        ["probe", "{d}/p.yaml", "--out", "{d}/out"],
        {"p.yaml": spec(PROBE, probes__takes__paying="nope")},
        expect="paying",
    ),  # fmt: skip
    Case(
        "probe with an unknown metric",
        ["probe", "{d}/p.yaml", "--out", "{d}/out"],
        {"p.yaml": spec(PROBE, probes__takes__metric="happiness")},
        expect="metric",
    ),  # fmt: skip
    Case(
        "view_of an unknown probe",
        ["probe", "{d}/p.yaml", "--out", "{d}/out"],
        {"p.yaml": spec(PROBE, probes__takes__view_of="other")},
        expect="view_of",
    ),  # fmt: skip
    Case(
        "probe of a spec without probes",
        ["probe", "{d}/s.yaml", "--out", "{d}/out"],
        {"s.yaml": spec()},
        expect="probes",
    ),  # fmt: skip
    # train
    Case(
        "train: unknown env",
        ["train", "--env", "NoSuchEnv-v0", "--timesteps", "64", "--out", "{d}/out"],
        expect="--env",
    ),  # fmt: skip
    Case(
        "train: timesteps 0",
        ["train", "--env", "CartPole-v1", "--timesteps", "0", "--out", "{d}/out"],
        expect="--timesteps",
    ),  # fmt: skip
    Case(
        "train: an info key CartPole lacks",
        ["train", "--env", "CartPole-v1", "--timesteps", "64", "--out", "{d}/out", "--info-key", "lap"],
        expect="--info-key",
    ),  # fmt: skip
    Case(
        "train: --out not empty",
        ["train", "--env", "CartPole-v1", "--timesteps", "64", "--out", "{d}/full"],
        {"full/keep.txt": "mine"},
        expect="--out",
    ),  # fmt: skip
    Case(
        "train: batch larger than a rollout",
        [
            "train",
            "--env",
            "CartPole-v1",
            "--timesteps",
            "64",
            "--n-steps",
            "32",
            "--batch-size",
            "64",
            "--out",
            "{d}/out",
        ],
        expect="batch",
    ),  # fmt: skip
    # reading commands
    Case("ls of a missing folder", ["ls", "{d}/nope"], expect="nope"),
    Case("summary of a folder that is no ledger", ["summary", "{d}/dir"], {"dir/x": ""}, expect="dir"),
    Case(
        "summary of a ledger with garbage run.json",
        ["summary", "{d}/led"],
        {"led/run.json": "{garbage", "led/samples/.keep": ""},
        expect="run.json",
    ),  # fmt: skip
    Case("report of a missing folder", ["report", "{d}/nope"], expect="nope"),
    Case(
        "report of a folder without runs",
        ["report", "{d}/empty"],
        {"empty/x.txt": ""},
        expect="no complete runs",
    ),
    Case(
        "report --out inside a run folder",
        ["report", "{d}/runs", "--out", "{d}/runs/tiny/default/seed=0/r"],
        setup="one_run",
        expect="--out",
    ),  # fmt: skip
    Case(
        "report --out the runs folder itself",
        ["report", "{d}/runs", "--out", "{d}/runs", "--overwrite"],
        setup="one_run",
        expect="--out",
    ),  # fmt: skip
    Case(
        "report --results over a file it did not write",
        ["report", "{d}/runs", "--results", "{d}/mine.md"],
        {"mine.md": "my notes\n"},
        setup="one_run",
        expect="mine.md",
    ),  # fmt: skip
    Case(
        "report --results a folder",
        ["report", "{d}/runs", "--results", "{d}/dir"],
        {"dir/x": ""},
        setup="one_run",
        expect="dir",
    ),  # fmt: skip
    Case(
        "report of runs without policy.npz",
        ["report", "{d}/runs"],
        setup="legacy_run",
        expect="--trust-pickles",
    ),
    Case(
        "checkpoint_every negative", _run(), {"s.yaml": spec(checkpoint_every=-1)}, expect="checkpoint_every"
    ),
    Case(
        "checkpoint_every not a number",
        _run(),
        {"s.yaml": spec(checkpoint_every="often")},
        expect="checkpoint_every",
    ),  # fmt: skip
    Case(
        "--track without wandb installed",
        [*_run(), "--track"],
        {"s.yaml": spec()},
        expect="--track",
        hide="wandb",
    ),  # fmt: skip
    Case("replay of a folder that is no run", ["replay", "{d}/dir"], {"dir/x": ""}, expect="dir"),
    Case(
        "replay of an unknown variant",
        ["replay", "{d}/runs/tiny/default/seed=0", "--variant", "nope"],
        setup="one_run",
        expect="--variant",
    ),  # fmt: skip
    Case(
        "replay over existing clips",
        ["replay", "{d}/runs/tiny/default/seed=0", "--out", "{d}/clips"],
        {"clips/default-episode0.gif": "mine"},
        setup="one_run",
        expect="--overwrite",
    ),  # fmt: skip
    Case(
        "replay of a run without policy.npz",
        ["replay", "{d}/runs/tiny/default/seed=0"],
        setup="legacy_run",
        expect="--trust-pickles",
    ),  # fmt: skip
    Case(
        "quickstart with a missing suite",
        ["quickstart", "--suite", "{d}/nope.yaml", "--out", "{d}/out"],
        expect="nope.yaml",
    ),  # fmt: skip
    Case(
        "quickstart with a suite that is not YAML",
        ["quickstart", "--suite", "{d}/q.yaml", "--out", "{d}/out"],
        {"q.yaml": "specs: [unclosed"},
        expect="q.yaml",
    ),  # fmt: skip
]


def _one_run(d: Path, legacy: bool = False) -> None:
    from rledger.experiments import plan_runs, validate
    from rledger.experiments.run import execute

    spec_ = validate(yaml.safe_load(spec()), "tiny")
    (job,) = plan_runs(spec_, d / "runs", overwrite=False)
    execute(job.config, job.path, "setup")
    if legacy:
        (job.path / "policy.npz").unlink()


_SETUP = {"one_run": _one_run, "legacy_run": lambda d: _one_run(d, legacy=True)}


@dataclass
class Outcome:
    case: Case
    exit_code: int
    message: str  # the last line of the output
    lines: int  # lines of output after the progress display
    traceback: bool
    usage: bool  # click's usage error: the usage line and a hint before the one-line error
    written: list[str]  # files created, changed or removed by the command


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(d)): (p.stat().st_mtime_ns, p.stat().st_size) for p in d.rglob("*") if p.is_file()
    }


def run_case(case: Case, d: Path) -> Outcome:
    """Run ``case`` in the empty folder ``d`` as its own process, as a user would."""
    import subprocess

    for rel, text in case.files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
    if case.setup:
        _SETUP[case.setup](d)
    before = _snapshot(d)
    env = dict(os.environ)
    if case.hide:  # a module that cannot be imported, as if not installed
        shadow = d / ".shadow"
        shadow.mkdir()
        (shadow / f"{case.hide}.py").write_text(f'raise ImportError("No module named {case.hide!r}")\n')
        env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    args = [a.replace("{d}", str(d)) for a in case.args]
    proc = subprocess.run(
        [sys.executable, "-c", "from rledger.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=d,
    )
    after = _snapshot(d)
    written = sorted(
        k for k in set(before) | set(after) if before.get(k) != after.get(k) and ".shadow" not in k
    )
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    return Outcome(
        case,
        proc.returncode,
        " ".join(err[-1:]) if err else "",
        len(err),
        "Traceback" in proc.stderr or "Traceback" in proc.stdout,
        proc.stderr.startswith("Usage:"),
        written,
    )


def clean(o: Outcome) -> bool:
    """What every bad input must give."""
    return (
        o.exit_code == 2
        and not o.traceback
        and (o.lines == 1 or (o.usage and o.lines == 3))
        and o.message.startswith("Error: ")
        and o.case.expect.lower() in o.message.lower()
        and not o.written
    )


def table(outcomes: list[Outcome], d_marker: str) -> str:
    lines = [
        "<!-- generated by `python tests/bad_inputs.py docs/bad-inputs.md`; edits are lost when it is rerun -->",
        "# Bad input: every case tried, and its message",
        "",
        "Each case runs `rledger` as its own process in an empty folder. What every case must give: exit",
        "code 2, one line naming the field or file (and the fix), and no file created, changed or removed",
        "(a wrong command-line option also shows click's usage line and hint above that line).",
        "`tests/test_bad_inputs.py` asserts this for every row.",
        "",
        f"{sum(map(clean, outcomes))} of {len(outcomes)} cases handled cleanly.",
        "",
        "| bad input | command | exit | message |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        cmd = " ".join(o.case.args[:1])
        msg = (o.message.replace(d_marker, "DIR") if d_marker else o.message).replace("|", "\\|")
        flag = "" if clean(o) else " **(not clean)**"
        lines.append(f"| {o.case.what} | `{cmd}` | {o.exit_code}{flag} | {msg} |")
    return "\n".join(lines) + "\n"


def run_all(cases: list[Case] = CASES) -> tuple[list[Outcome], list[str]]:
    outcomes, folders = [], []
    for case in cases:
        d = Path(tempfile.mkdtemp(prefix="badinput-"))
        folders.append(str(d))
        outcomes.append(run_case(case, d))
    return outcomes, folders


if __name__ == "__main__":
    import re
    import shutil

    outcomes, folders = run_all()
    text = table(outcomes, folders[0])
    for d in folders:
        text = text.replace(d, "DIR")
        shutil.rmtree(d, ignore_errors=True)
    text = re.sub(r"/tmp/badinput-[a-z0-9_]+", "DIR", text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    print(text)
    sys.exit(0 if all(map(clean, outcomes)) else 1)
