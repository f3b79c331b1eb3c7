"""What every claim shares: finding run folders, the result of a claim, writing figures and CSVs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rledger.experiments.backends import run_configs
from rledger.experiments.run import DONE, load_model, read_done
from rledger.experiments.spec import is_name
from rledger.ledger import Ledger, Ledgers
from rledger.ledger.writer import atomic_write_bytes


@dataclass(frozen=True)
class RunInfo:
    """One complete run folder (``<root>/<experiment>/<variant>/seed=<n>/``)."""

    experiment: str
    variant: str
    seed: int
    path: Path
    env_id: str
    config: dict[str, Any]
    trust_pickles: bool = False  # may its model.zip be unpickled when it has no policy.npz

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.path / "ledger")

    def model(self) -> Any:
        """The trained model, loaded without unpickling unless ``trust_pickles`` (see
        :func:`rledger.experiments.run.load_model`)."""
        return load_model(self.path, self.trust_pickles)

    @property
    def steps_per_rollout(self) -> int:
        info = self.ledger.run_info
        return int(info["config"]["n_steps"]) * int(info["n_envs"])

    @property
    def is_gridworld(self) -> bool:
        return self.env_id.startswith("rledger/")


@dataclass
class ClaimResult:
    """What one claim's analysis produced: figure stems (each written as .png and .pdf), CSV files,
    findings in neutral sentences, and for probe-like claims the verdict on "the policy seeks reward"
    (``supports``, ``contradicts`` or ``inconclusive``) with its reason."""

    claim: str
    title: str
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    verdicts: list[dict[str, str]] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    # probes: one row per probe and policy (controls first), for the report's first section
    roster: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "title": self.title,
            "figures": [str(p) for p in self.figures],
            "tables": [str(p) for p in self.tables],
            "findings": self.findings,
            "verdicts": self.verdicts,
            "rules": self.rules,
            "roster": self.roster,
        }


def find_runs(
    root: str | os.PathLike[str],
    experiment: str | None = None,
    trust_pickles: bool = False,
    broken: list[str] | None = None,
) -> list[RunInfo]:
    """Every complete run (with its DONE marker and a whole ledger) under ``root``, sorted by
    experiment, variant and seed. ``root`` is the ``--out`` folder of ``rledger run``, or one
    experiment folder in it. Runs trained on a transformed reward (the reward-scale sweep's, ``reward``
    in their config) are left out: the claims read reward as the env gives it;
    ``rledger.probes.reward_scale`` reads them. A complete run whose files cannot be read (config,
    DONE, run.json, a Parquet part or manifest: :meth:`Ledger.check`) raises a ValueError naming the
    file, or, given a ``broken`` list, is listed there and left out. ``trust_pickles``: see
    :func:`~rledger.experiments.run.load_model`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass the --out folder of `rledger run`")
    runs = []
    for path, config in run_configs(root, broken):
        if not (path / DONE).is_file() or not (path / "ledger" / "run.json").is_file():
            continue
        if experiment is not None and config.get("experiment") != experiment:
            continue
        if "reward" in config:
            continue
        try:
            for key in ("experiment", "variant"):  # names read back become file names: one component
                if not is_name(config.get(key)):
                    raise ValueError(
                        f"{path / 'config.yaml'}: {key} {config.get(key)!r} is not a name (letters, digits, "
                        "'_', '.', '-'); rerun the run"
                    )
            read_done(path)
            Ledger(path / "ledger").check()
            run = RunInfo(
                experiment=str(config["experiment"]),
                variant=str(config["variant"]),
                seed=int(config["seed"]),
                path=path,
                env_id=str(config["env"]["id"]),
                config=config,
                trust_pickles=trust_pickles,
            )
        except (ValueError, KeyError, TypeError) as exc:
            message = str(exc) if isinstance(exc, ValueError) else f"{path / 'config.yaml'}: no {exc}"
            if broken is None:
                raise ValueError(message) from None
            broken.append(message)
            continue
        runs.append(run)
    runs.sort(key=lambda r: (r.experiment, r.variant, r.seed))
    return runs


def ledgers(runs: list[RunInfo]) -> Ledgers:
    """The runs' ledgers as one DuckDB database (:class:`rledger.Ledgers`), labelled by experiment,
    variant and seed."""
    return Ledgers.of((r.experiment, r.variant, r.seed, r.path) for r in runs)


def group_runs(runs: list[RunInfo]) -> dict[tuple[str, str], list[RunInfo]]:
    """Runs grouped by (experiment, variant), in order."""
    groups: dict[tuple[str, str], list[RunInfo]] = {}
    for r in runs:
        groups.setdefault((r.experiment, r.variant), []).append(r)
    return groups


def save_figure(fig: Any, stem: Path) -> Path:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf``, each whole or not at all; returns the stem."""
    import io

    import matplotlib.pyplot as plt

    for ext, kwargs in (("png", {"dpi": 110}), ("pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kwargs)
        atomic_write_bytes(stem.with_suffix(f".{ext}"), buf.getvalue())
    plt.close(fig)
    return stem


def save_csv(df: pd.DataFrame, path: Path) -> Path:
    atomic_write_bytes(path, df.to_csv(index=False).encode())
    return path


def new_figure(*shape: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = (shape + (1, 1))[:2] if shape else (1, 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    return fig, axes


def script_main(claim_run: Any, doc: str) -> None:
    """The command line of every ``analysis/*.py`` script: ``ROOT [--out DIR] [--trust-pickles]
    [--strict]`` (default ``ROOT/analysis``); prints the findings and the files written; exit 2 on a
    missing ROOT, a broken run under ``--strict`` or a model that needs ``--trust-pickles``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("root", type=Path, help="the --out folder of `rledger run` / `rledger probe`")
    parser.add_argument("--out", type=Path, default=None, help="output folder [default: ROOT/analysis]")
    parser.add_argument(
        "--trust-pickles",
        action="store_true",
        help="load runs without policy.npz from model.zip, which unpickles it (runs any code it holds)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 2 if any run's files cannot be read")
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"{args.root}: no such folder; pass the --out folder of rledger run", file=sys.stderr)
        sys.exit(2)
    broken: list[str] = []
    try:
        runs = find_runs(args.root, trust_pickles=args.trust_pickles, broken=None if args.strict else broken)
        result = claim_run(args.root, args.out or args.root / "analysis", runs)
    except ValueError as exc:  # a broken run under --strict, or a model that needs --trust-pickles
        print(str(exc), file=sys.stderr)
        sys.exit(2)
    for message in broken:
        print(f"left out: {message}", file=sys.stderr)
    for line in result.findings:
        print(line)
    for path in [*result.figures, *result.tables]:
        print(f"wrote {path}")
