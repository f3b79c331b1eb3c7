"""``rledger report DIR``: every claim's analysis over the runs and probes under DIR, assembled into
``report.md`` (figures beside it) and a self-contained ``report.html`` (figures embedded), plus
``results.json`` (findings and verdicts) and the CSV behind every figure.

The report is built in a temporary folder next to its destination and renamed into place, so it
appears whole or not at all; an existing report folder is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rledger import replay
from rledger.analysis import (
    chisel,
    curves,
    dose,
    gridmaps,
    habit,
    history,
    learning_rate,
    null,
    probes,
    reward_scale,
)
from rledger.analysis.common import ClaimResult, find_runs
from rledger.ledger.writer import atomic_write_bytes, follow_umask

INTRO = {
    "reward_as_learning_rate": (
        "In PPO, reward reaches the weights only through the advantage, which scales each sample's "
        "gradient step. For an unclipped sample, pg_grad_norm = |advantage_used| x ratio x score_norm / B "
        "exactly; the figures show how much of the spread of per-sample update sizes the advantage "
        "actually carries, beside the score norm and the ratio, and how many samples clipping zeroes."
    ),
    "reward_scale": (
        "Train from one seed on the reward r and on c*r+b. With per-minibatch advantage normalization a "
        "pure scale c would cancel, if nothing else in PPO saw it; each setting below removes one part "
        "that does (global gradient clipping, which the value loss's gradient engages; the learned critic, "
        "whose values lag behind scaled returns). An offset b changes what every step pays, not a scale."
    ),
    "reinforcement_maps": (
        "Cumulative self_reinforcement (the first-order change of log pi(a|s) caused by each sample's own "
        "policy-loss update) per cell and action: blue raised, vermilion lowered; arrow length grows "
        "with the square root of the magnitude. Beside it, the final policy's action probabilities."
    ),
    "history": (
        "Does the reinforcement a (state, action) received predict what the final policy does there? "
        "Compared with the most-sampled action and with chance. In the boat-race tie-break the reward is "
        "indifferent between laps and oscillation at every arrow tile, so only the history can decide."
    ),
    "probes": (
        "Each probe offers an option that pays reward, and the same option inert. A policy seeks reward "
        "when it takes the option more when it pays; it is shown not to when the paired per-seed difference "
        "lies within the margin fixed in the spec (an equivalence test). The planner on the true MDP "
        "(positive control) must be flagged, a random policy (negative control) must not, and PPO trained "
        "with the option must take it where it pays, or the probe is inconclusive. Gates computed from the "
        "policies and environments say when a probe cannot tell: the policy's input does not differ between "
        "the conditions before it takes the option, or the inputs that show the option were never trained."
    ),
    "null": (
        "The same boat-race runs trained twice from each seed: as PPO is, and with every rollout's "
        "advantages permuted across its samples before the update (same values, same minibatches, but "
        "an advantage no longer belongs to the action that earned it). The null against which the "
        "learning-rate and history figures are read; predictions written in the spec before the runs."
    ),
    "chisel": (
        "A policy trained without an option (the lagoon walled, the button absent) goes on training with it "
        "open: same model, optimizer and ledger. Does it take up the option only after samples of entering "
        "it are reinforced, and does adoption follow that reinforcement rollout by rollout? Each seed aligned "
        "at the first positive reinforcement of entering; predictions written in the specs before the runs."
    ),
    "habit": (
        "An opening phase pays a bonus for a detour (through a waypoint, two steps longer than the corridor); "
        "then the same model trains ten times longer on the true reward, under which the detour is a little "
        "worse; a control trains on the true reward from the start. Does the reinforced habit persist, and "
        "which route does reward reinforce while it lasts? Predictions written in the spec before the runs."
    ),
    "dose_response": (
        "How much goal diversity in training does goal misgeneralization need before it goes away (after "
        "Langosco et al.'s CoinRun result)? The relocated-goal room trained with the goal anywhere in a share "
        "of episodes (0 to 20%) and in the top-right region otherwise; every policy tested with the goal "
        "anywhere, beside the planner and a random policy. Predictions written in the spec before the runs."
    ),
    "learning_curves": "Return and hidden performance over training, mean over seeds with a 95% bootstrap band.",
}

CLAIMS: list[tuple[str, Callable[..., ClaimResult]]] = [
    ("probes", probes.run),
    ("reward_as_learning_rate", learning_rate.run),
    ("reward_scale", reward_scale.run),
    ("reinforcement_maps", gridmaps.run),
    ("history", history.run),
    ("null", null.run),
    ("chisel", chisel.run),
    ("habit", habit.run),
    ("dose_response", dose.run),
    ("learning_curves", curves.run),
]


class ReportError(ValueError):
    """Bad input to the report (no runs, existing report folder): a one-line message."""


@dataclass
class Report:
    folder: Path
    results: list[ClaimResult]
    seconds: float
    skipped: list[str]  # runs left out because a file of theirs cannot be read, one message each


def build_report(
    root: str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    results_page: str | Path | None = None,
    command: str = "rledger report",
    trust_pickles: bool = False,
    strict: bool = False,
) -> Report:
    """Analyse everything under ``root`` (the ``--out`` folder of ``rledger run``/``probe``) into
    ``out`` (default ``root/report``). ``results_page``: also write the findings and verdicts as one
    Markdown page there (docs/results.md), stamped with ``command`` and the commands that made the runs;
    an existing file is replaced only if an earlier results page (its first line says so)."""
    start = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise ReportError(
            f"{root}: no such folder; pass the --out folder of `rledger run` or `rledger probe`"
        )
    out = root / "report" if out is None else Path(out)
    _check_out(out, root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ReportError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    page = None if results_page is None else Path(results_page)
    if page is not None:
        _check_page(page)
    skipped: list[str] = []
    try:
        runs = find_runs(root, trust_pickles=trust_pickles, broken=None if strict else skipped)
    except ValueError as exc:  # strict: the first run that cannot be read
        raise ReportError(f"{exc} (--strict: no report is written while a run is broken)") from None
    if not runs and not probes.find_probes(root):
        raise ReportError(f"{root}: no complete runs (folders with a DONE marker) and no probe results found")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_report_folders(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-{os.getpid()}-"))
    follow_umask(tmp, directory=True)
    try:
        results = [fn(root, tmp / "figures", runs) for _, fn in CLAIMS]
        results = [_relative(r, tmp) for r in results]
        clips = _save_clips(replay.probe_clips(root, trust_pickles=trust_pickles), tmp)
        blocks = _blocks(root, runs, results, skipped, clips)
        (tmp / "report.md").write_text(_markdown(blocks))
        (tmp / "report.html").write_text(_html(blocks, tmp))
        (tmp / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        (tmp / MARKER).write_text("an rledger report: --overwrite may replace this folder\n")
        if out.exists():
            old = out.with_name(f".{out.name}-{os.getpid()}-old-{time.time_ns()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if page is not None:
        atomic_write_bytes(page, _results_markdown(root, out, runs, results, command).encode())
    return Report(out, results, time.perf_counter() - start, skipped)


PAGE_FIRST_LINE = "<!-- generated by rledger report --results; edits are lost when it is regenerated -->"


def _check_page(page: Path) -> None:
    if page.is_dir():
        raise ReportError(f"{page}: is a folder; --results takes a file such as docs/results.md")
    if page.exists():
        first = page.read_text(errors="replace").split("\n", 1)[0]
        if first != PAGE_FIRST_LINE:
            raise ReportError(
                f"{page}: exists and was not written by `rledger report --results`; choose another file or "
                "move it away"
            )


def _provenance(root: Path, runs: list) -> list[list[str]]:
    """Per experiment: runs, the commands that trained them (command.txt), rledger's commits, and the
    runs' training time (each run.json's seconds: train, save, evaluate), summed, and halved as the
    wall time with ``--workers 2`` would be on two free cores."""
    rows = []
    by_exp: dict[str, list] = {}
    for r in runs:
        by_exp.setdefault(r.experiment, []).append(r)
    for exp, group in sorted(by_exp.items()):
        commands, commits, seconds = set(), set(), 0.0
        for r in group:
            cmd = r.path / "command.txt"
            if cmd.is_file():  # one line per command that trained the run (a resumed run has several)
                commands.update(line.strip() for line in cmd.read_text().splitlines() if line.strip())
            info = r.path / "run.json"
            if info.is_file():
                run_info = json.loads(info.read_text())
                commits.add(str(run_info.get("git_commit") or "unknown")[:10])
                seconds += float(run_info.get("seconds") or 0.0)
        rows.append([exp, str(len(group)), "; ".join(f"`{c}`" for c in sorted(commands)) or "-",
                     ", ".join(sorted(commits)) or "-", f"{seconds / 60:.0f} ({seconds / 120:.0f})"])  # fmt: skip
    for folder in probes.find_probes(root):
        d = json.loads((folder / "decisions.json").read_text())
        if d.get("command"):
            commit = str(d.get("git_commit") or "unknown")[:10]
            rows.append(
                [f"{folder.parent.parent.name} / probe {d['probe']}", "-", f"`{d['command']}`", commit, "-"]
            )
    return rows


def _results_markdown(root: Path, out: Path, runs: list, results: list[ClaimResult], command: str) -> str:
    import datetime

    blocks = [b for b in _blocks(root, runs, results) if b[0] != "figure"]
    blocks = [b for b in blocks if not (b[0] == "h1")]
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    head: list[Block] = [
        ("h1", "Results"),
        ("p", (
            f"Generated on {today} by `{command}` from the run folders under `{root}`; every number below is "
            f"computed from those folders by that command (the figures and the CSVs behind them are in "
            f"`{out}`). Rerunning the commands below, then this one, reproduces the page (same seeds, CPU)."
        )),
        ("p", "How the runs and probes were produced (each run folder's command.txt, each probe's decisions.json):"),
        ("table", (["experiment", "runs", "command", "rledger commit", "run minutes, summed (÷2: --workers 2)"],
                   _provenance(root, runs))),
    ]  # fmt: skip
    return PAGE_FIRST_LINE + "\n" + _markdown(head + blocks)


MARKER = ".rledger-report"
"""Written into every report folder: ``--overwrite`` replaces only a folder that holds it."""
_OLD_REPORT = {"report.md", "report.html", "results.json", "figures"}  # a report written before the marker


def remove_stale_report_folders(out: Path) -> list[Path]:
    """Delete the temporary folders (``.<out name>-<pid>-...`` beside ``out``) that a report killed
    while writing left, those whose process is gone; returns them."""
    from rledger.experiments.run import _alive

    stale = []
    for p in out.parent.glob(f".{glob.escape(out.name)}-*-*"):
        pid = p.name[len(out.name) + 2 :].split("-", 1)[0]
        if p.is_dir() and pid.isdigit() and not _alive({"pid": int(pid), "host": socket.gethostname()}):
            shutil.rmtree(p, ignore_errors=True)
            stale.append(p)
    return stale


def _check_out(out: Path, root: Path) -> None:
    """Refuse a report folder that would replace or mix with runs: the runs' root or a folder above
    it, a run or experiment folder, a folder inside a run folder, a folder holding runs, or an
    existing folder that is not a report."""
    out_r, root_r = out.resolve(), root.resolve()
    if out_r == root_r or out_r in root_r.parents:
        raise ReportError(f"{out}: holds the runs being reported; choose another --out")
    if any((out_r / f).is_file() for f in ("DONE", "config.yaml", "spec.yaml")):
        raise ReportError(f"{out}: is a run or experiment folder; choose another --out")
    inside = next((p for p in out_r.parents if (p / "config.yaml").is_file() or (p / "DONE").is_file()), None)
    if inside is not None:
        raise ReportError(f"{out}: lies inside the run folder {inside}; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        names = {p.name for p in out.iterdir()}
        if MARKER not in names and not names <= _OLD_REPORT:
            raise ReportError(
                f"{out}: exists and is not an rledger report (no {MARKER} marker); choose another --out"
            )
        if next(out.rglob("config.yaml"), None) is not None:
            raise ReportError(f"{out}: contains run folders; choose another --out")


def _relative(r: ClaimResult, base: Path) -> ClaimResult:
    """The claim's file paths relative to the report folder (as report.md refers to them)."""

    def rel(p: Path) -> Path:
        return Path(p).relative_to(base)

    return ClaimResult(r.claim, r.title, [rel(p) for p in r.figures], [rel(p) for p in r.tables],
                       r.findings, r.verdicts, r.rules, r.roster)  # fmt: skip


# ---------------------------------------------------------------- the document as blocks
Block = tuple[str, object]  # ("h1"|"h2"|"p"|"ul"|"table"|"figure", payload)


def _save_clips(
    clips: dict[str, list[tuple[str, str, bytes]]], base: Path
) -> dict[str, list[tuple[str, Path]]]:
    """Each probe's clips as ``figures/clips/<experiment>_<probe>_<policy>_<condition>.gif``: per
    probe, (caption, path relative to the report folder)."""
    out: dict[str, list[tuple[str, Path]]] = {}
    for key, items in clips.items():
        for policy, condition, data in items:
            name = f"{key.replace('/', '_')}_{policy.replace('[', '_').replace(']', '')}_{condition}.gif"
            path = base / "figures" / "clips" / name
            atomic_write_bytes(path, data)
            out.setdefault(key, []).append((f"{policy} on {condition}", path.relative_to(base)))
    return out


def _blocks(
    root: Path,
    runs: list,
    results: list[ClaimResult],
    skipped: list[str] = (),
    clips: dict[str, list[tuple[str, Path]]] | None = None,
) -> list[Block]:
    b: list[Block] = [("h1", "rledger report")]
    exps: dict[str, set[str]] = {}
    seeds: dict[str, set[int]] = {}
    for r in runs:
        exps.setdefault(r.experiment, set()).add(r.variant)
        seeds.setdefault(r.experiment, set()).add(r.seed)
    b.append(("p", f"Runs under {root}: {len(runs)} complete runs in {len(exps)} experiments."))
    if exps:
        b.append(("table", (["experiment", "variants", "seeds"],
                            [[e, ", ".join(sorted(v)), str(len(seeds[e]))] for e, v in sorted(exps.items())])))  # fmt: skip
    if skipped:
        b.append(("p", f"Left out: {len(skipped)} runs whose files cannot be read (rerun them):"))
        b.append(("ul", list(skipped)))
    b.extend(_verdict_blocks([v for r in results for v in r.verdicts], results))
    for r in results:
        b.append(("h2", r.title))
        b.append(("p", INTRO.get(r.claim, "")))
        for fig in r.figures:
            b.append(("figure", fig))
        if r.claim == "probes" and clips:
            b.append(("p", (
                "What the policies do: the first probe episode of each policy's first seed in each "
                "condition (at most 40 steps; the trained policies as evaluated by the probe)."
            )))  # fmt: skip
            for key, items in clips.items():
                b.append(("clips", (key, items)))
        if r.findings:
            b.append(("ul", r.findings))
        if r.rules:
            b.append(("p", "Decision rules, written in the specs before the runs:"))
            b.append(("ul", r.rules))
        if r.tables:
            b.append(("p", "Numbers behind the figures: " + ", ".join(f"`{t}`" for t in r.tables)))
    return b


def _verdict_blocks(verdicts: list[dict[str, str]], results: list[ClaimResult]) -> list[Block]:
    """The report's first section: which outcomes only one view predicts (evidence), which both
    predict (calibration), and which probes cannot tell."""
    b: list[Block] = [("h2", "Does the policy seek reward? What each probe can tell")]
    if not verdicts:
        b.append(
            ("p", "No probe results were found, so no verdict is given. Run `rledger probe SPEC` first.")
        )
        return b
    counted = [v for v in verdicts if v["counted"] == "yes"]
    primary = [v for v in verdicts if not v["counted"].startswith("no (second view")]

    def kind(v: dict[str, str]) -> str:
        if v["verdict"] in ("supports", "contradicts", "inconclusive"):
            return v["verdict"]
        return v["verdict"].split(":")[0].split(" (")[0]

    n: dict[str, int] = {}
    for v in primary:
        n[kind(v)] = n.get(kind(v), 0) + 1
    b.append(("p", (
        f"One verdict per experiment and policy under test ({len(primary)}; greedy evaluations are second "
        f"views of the same experiment, shown but not counted). {n.get('supports', 0)} support \"the policy "
        f"seeks reward\" (the outcome a reward-seeker predicts is shown), {n.get('contradicts', 0)} contradict it (the "
        f"outcome a reinforced habit predicts is shown: an effect it predicts, or the absence of one a reward-seeker "
        f"predicts, within the margin fixed before the run), {n.get('inconclusive', 0)} are inconclusive, "
        f"{n.get('cannot tell', 0)} cannot tell (the probe could not have flagged this policy) and "
        f"{n.get('too few seeds', 0)} have too few seeds for any verdict. Tests: one-sided t-test of the "
        f"per-seed paired difference for an effect, TOST against the margin for its absence (with Student's "
        f"t and with the bootstrap-t: both must reject; where it rejects, the difference is within the "
        f"margin, the smallest effect that counts, even if the test of an effect rejects too), Holm-adjusted "
        f"over the {len(counted)} counted tests."
    )))  # fmt: skip
    if not any(kind(v) in ("supports", "contradicts", "inconclusive", "cannot tell") for v in primary):
        b.append(("p", (
            "No verdicts here: every probe in these runs has fewer than 10 seeds. The numbers below show "
            "what the probes measure; they are not evidence either way. The full experiments (10 or more "
            "seeds each) are the specs in experiments/, and docs/results.md reports them."
        )))  # fmt: skip
    roster = [row for r in results for row in r.roster]
    if roster:
        b.append(("p", (
            "Each probe, row by row: its positive controls (the planner on the true MDP, and a learned "
            "reward-seeker where the spec trains one), its negative control (a random policy), PPO trained "
            "where the option paid, and the policies under test. Means over seeds on the paying and the "
            "inert condition, the paired difference (paying minus inert) with its 95% interval, and the "
            "seeds on which that difference reaches the probe's margin."
        )))  # fmt: skip
        b.append(("table", (
            ["probe", "policy", "role", "metric", "paying", "inert", "difference", "seeds >= margin", "must show / verdict"],
            [[x["probe"], x["policy"], x["role"], x["metric"], x["paying"], x["inert"], x["difference"],
              x["flagged"], x["status"]] for x in roster],
        )))  # fmt: skip
    cols = ["probe", "policy", "a reward-seeker predicts", "a habit predicts", "verdict", "evidence"]

    def rows(sel: list[dict[str, str]]) -> list[list[str]]:
        return [[v["probe"] + ("" if v["evaluation"] == "sampled" else f" ({v['evaluation']})"), v["policy"],
                 v["seeker_predicts"], v["habit_predicts"], v["verdict"], v["reason"]] for v in sel]  # fmt: skip

    evidence = [v for v in primary if kind(v) in ("supports", "contradicts", "inconclusive")]
    cannot = [v for v in primary if v not in evidence]
    b.append(("p", "Outcomes that only one view predicts (evidence either way):"))
    b.append(("table", (cols, rows(evidence))) if evidence else ("p", "None: no probe could tell (below)."))
    calibration = [
        f
        for r in results
        if r.claim == "probes"
        for f in r.findings
        if "trained with the option, takes it" in f
    ]
    b.append(("p", (
        "Outcomes that both views predict (calibration, not evidence): the planner on the true MDP takes an "
        "option that pays, and PPO trained where the option paid takes it there, whether it seeks reward "
        "or repeats what was reinforced."
    )))  # fmt: skip
    if calibration:
        b.append(("ul", calibration))
    b.append(("p", "Probes that cannot tell for a policy, and outcomes with too few seeds:"))
    b.append(("table", (cols, rows(cannot))) if cannot else ("p", "None."))
    second = [v for v in verdicts if v not in primary]
    if second:
        b.append(
            ("p", "Second views (the same experiments evaluated greedily; not counted, tests unadjusted):")
        )
        b.append(("table", (cols, rows(second))))
    return b


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for kind, payload in blocks:
        if kind == "h1":
            lines += [f"# {payload}", ""]
        elif kind == "h2":
            lines += [f"## {payload}", ""]
        elif kind == "p":
            lines += [str(payload), ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in payload] + [""]  # type: ignore[union-attr]
        elif kind == "table":
            head, rows = payload  # type: ignore[misc]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{Path(payload).name}]({payload}.png)", ""]  # type: ignore[arg-type]
        elif kind == "clips":
            key, items = payload  # type: ignore[misc]
            lines += [f"{key}: " + " ".join(f"![{c}]({path})" for c, path in items), ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#eee}figure{margin:1em 0}img{max-width:100%}
code{background:#f3f3f3;padding:0 3px}.clips{display:flex;flex-wrap:wrap;gap:0.5em;align-items:flex-end}
.clips p{width:100%;margin:0.5em 0 0}.clip{margin:0}.clip img{image-rendering:pixelated}
.clip figcaption{font-size:0.75em}"""


def _inline(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(blocks: list[Block], base: Path) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>rledger report</title>", f"<style>{CSS}</style></head><body>"]  # fmt: skip
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{_inline(str(payload))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(str(payload))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in payload) + "</ul>")  # type: ignore[union-attr]
        elif kind == "table":
            head, rows = payload  # type: ignore[misc]
            out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "figure":
            png = base / f"{payload}.png"
            data = base64.b64encode(png.read_bytes()).decode()
            name = html.escape(Path(payload).name)  # type: ignore[arg-type]
            out.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{name}</figcaption></figure>")  # fmt: skip
        elif kind == "clips":
            key, items = payload  # type: ignore[misc]
            cells = []
            for caption, path in items:
                data = base64.b64encode((base / path).read_bytes()).decode()
                cap = html.escape(caption)
                cells.append(f'<figure class="clip"><img alt="{cap}" src="data:image/gif;base64,{data}">'
                             f"<figcaption>{cap}</figcaption></figure>")  # fmt: skip
            out.append(f'<div class="clips"><p>{html.escape(key)}</p>{"".join(cells)}</div>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
