"""The package's import graph: no cycle anywhere under src/, and the gridworlds without torch or SB3."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the rledger modules it imports, at module level or inside functions alike.
    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in files else base)
        graph[module] = {e for e in edges if e in files and e != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_under_src():
    graph = import_graph()
    assert len(graph) > 40 and graph["rledger.ppo"], "the walk found the package's modules and imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    graph = import_graph()
    graph["rledger.persample.loss"] = graph["rledger.persample.loss"] | {"rledger.persample.engine"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "rledger.persample.engine" in cycle


def test_persample_imports_one_way():
    """The engine package's modules import only those below them (loss at the bottom, engine on top)."""
    order = ["loss", "gram", "functional", "replay", "slots", "checks", "engine"]
    graph = import_graph()
    for rank, name in enumerate(order):
        deps = {d.removeprefix("rledger.persample.") for d in graph[f"rledger.persample.{name}"]}
        inside = deps & set(order)
        assert all(order.index(d) < rank for d in inside), f"{name} imports {inside}"
        assert not {d for d in deps if d.startswith("rledger")}, f"{name} imports outside the engine: {deps}"


def test_envs_import_without_torch_or_sb3():
    """The gridworlds need numpy and gymnasium only; registration still happens on import rledger."""
    code = (
        "import sys, rledger.envs, gymnasium as gym\n"
        "heavy = sorted(m for m in ('torch', 'stable_baselines3', 'pandas', 'duckdb') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "env = gym.make('rledger/BoatRace-v0'); env.reset(seed=0); env.step(0)\n"
        "import rledger\n"
        "assert rledger.InstrumentedPPO.__name__ == 'InstrumentedPPO' and 'torch' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
