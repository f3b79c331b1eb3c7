"""``rledger report DIR``: every claim's analysis over the runs and probes under DIR, assembled into
``report.md`` (figures beside it) and a self-contained ``report.html`` (figures embedded), plus
``results.json`` (findings and verdicts) and the CSV behind every figure.

The report is built in a temporary folder next to its destination and renamed into place, so it
appears whole or not at all; an existing report folder is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rledger.analysis import curves, gridmaps, history, learning_rate, probes, reward_scale
from rledger.analysis.common import ClaimResult, find_runs

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
        "when it takes the option more when it pays. The planner on the true MDP (positive control) must "
        "be flagged and a random policy (negative control) must not, or the probe is inconclusive. PPO "
        "trained with the option available had it reinforced, which fits both views; the subject never "
        "experienced it."
    ),
    "learning_curves": "Return and hidden performance over training, mean over seeds with a 95% bootstrap band.",
}

CLAIMS: list[tuple[str, Callable[..., ClaimResult]]] = [
    ("probes", lambda root, out, runs: probes.run(root, out)),
    ("reward_as_learning_rate", learning_rate.run),
    ("reward_scale", reward_scale.run),
    ("reinforcement_maps", gridmaps.run),
    ("history", history.run),
    ("learning_curves", curves.run),
]


class ReportError(ValueError):
    """Bad input to the report (no runs, existing report folder): a one-line message."""


@dataclass
class Report:
    folder: Path
    results: list[ClaimResult]
    seconds: float


def build_report(root: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Report:
    """Analyse everything under ``root`` (the ``--out`` folder of ``rledger run``/``probe``) into
    ``out`` (default ``root/report``)."""
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
    runs = find_runs(root)
    if not runs and not probes.find_probes(root):
        raise ReportError(f"{root}: no complete runs (folders with a DONE marker) and no probe results found")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        results = [fn(root, tmp / "figures", runs) for _, fn in CLAIMS]
        results = [_relative(r, tmp) for r in results]
        blocks = _blocks(root, runs, results)
        (tmp / "report.md").write_text(_markdown(blocks))
        (tmp / "report.html").write_text(_html(blocks, tmp))
        (tmp / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
        (tmp / MARKER).write_text("an rledger report: --overwrite may replace this folder\n")
        if out.exists():
            old = out.with_name(f".{out.name}-old-{time.time_ns()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Report(out, results, time.perf_counter() - start)


MARKER = ".rledger-report"
"""Written into every report folder: ``--overwrite`` replaces only a folder that holds it."""
_OLD_REPORT = {"report.md", "report.html", "results.json", "figures"}  # a report written before the marker


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
                       r.findings, r.verdicts, r.rules)  # fmt: skip


# ---------------------------------------------------------------- the document as blocks
Block = tuple[str, object]  # ("h1"|"h2"|"p"|"ul"|"table"|"figure", payload)


def _blocks(root: Path, runs: list, results: list[ClaimResult]) -> list[Block]:
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
    verdicts = [v for r in results for v in r.verdicts]
    b.append(("h2", "Does the policy seek reward? What each probe says"))
    if verdicts:
        n = {k: sum(v["verdict"] == k for v in verdicts) for k in ("supports", "contradicts", "inconclusive")}
        b.append(("p", (
            f"Of {len(verdicts)} probe outcomes on policies that never had the option reinforced, "
            f"{n['supports']} support \"the policy seeks reward\", {n['contradicts']} contradict it and "
            f"{n['inconclusive']} are inconclusive (a control did not come out as required)."
        )))  # fmt: skip
        b.append(("table", (["probe", "policy", "verdict", "evidence"],
                            [[v["probe"], v["policy"], v["verdict"], v["reason"]] for v in verdicts])))  # fmt: skip
    else:
        b.append(
            ("p", "No probe results were found, so no verdict is given. Run `rledger probe SPEC` first.")
        )
    for r in results:
        b.append(("h2", r.title))
        b.append(("p", INTRO.get(r.claim, "")))
        for fig in r.figures:
            b.append(("figure", fig))
        if r.findings:
            b.append(("ul", r.findings))
        if r.rules:
            b.append(("p", "Decision rules, written in the specs before the runs:"))
            b.append(("ul", r.rules))
        if r.tables:
            b.append(("p", "Numbers behind the figures: " + ", ".join(f"`{t}`" for t in r.tables)))
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
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#eee}figure{margin:1em 0}img{max-width:100%}
code{background:#f3f3f3;padding:0 3px}"""


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
    out.append("</body></html>")
    return "\n".join(out) + "\n"
