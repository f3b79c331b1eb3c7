"""Plain-text maps: loading from the ``rledger.maps`` package and parsing with exact error messages."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import numpy as np

WALL = "#"
AGENT = "A"


@dataclass(frozen=True)
class GridMap:
    """A parsed map: ``tiles[r, c]`` is the character under each cell (the agent's start cell holds
    ``under_agent``), ``start`` the agent's start cell, ``source`` where the text came from."""

    tiles: np.ndarray  # (rows, cols) of 1-character strings
    start: tuple[int, int]
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.tiles.shape  # type: ignore[return-value]

    def cells(self, char: str) -> list[tuple[int, int]]:
        return [(int(r), int(c)) for r, c in zip(*np.nonzero(self.tiles == char), strict=True)]

    def passable(self, cell: tuple[int, int]) -> bool:
        r, c = cell
        rows, cols = self.shape
        return 0 <= r < rows and 0 <= c < cols and self.tiles[r, c] != WALL

    def reachable(self, blocked: Iterable[str] = ()) -> set[tuple[int, int]]:
        """Cells reachable from the start by moves between passable cells, avoiding ``blocked`` tiles."""
        blocked = set(blocked)
        seen = {self.start}
        queue = deque([self.start])
        while queue:
            r, c = queue.popleft()
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                nxt = (r + dr, c + dc)
                if nxt not in seen and self.passable(nxt) and self.tiles[nxt] not in blocked:
                    seen.add(nxt)
                    queue.append(nxt)
        return seen


def parse_map(text: str, source: str, legend: Iterable[str], under_agent: str = " ") -> GridMap:
    """Parse ``text`` (rows of equal length) whose characters all lie in ``legend`` plus the agent.

    Raises ``ValueError`` naming ``source``, the line and the column of the first problem: an unknown
    character, a ragged row, no agent start, or a second agent start.
    """
    allowed = set(legend) | {AGENT}
    lines = text.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{source}: the map is empty; write rows of tiles (legend: {_legend(allowed)})")
    width = len(lines[0])
    start: tuple[int, int] | None = None
    for i, line in enumerate(lines):
        if len(line) != width:
            raise ValueError(
                f"{source}:{i + 1}: row has {len(line)} characters, expected {width} (rows must be equally long)"
            )
        for j, ch in enumerate(line):
            if ch not in allowed:
                raise ValueError(
                    f"{source}:{i + 1}:{j + 1}: unknown character {ch!r}; legend: {_legend(allowed)}"
                )
            if ch == AGENT:
                if start is not None:
                    raise ValueError(
                        f"{source}:{i + 1}:{j + 1}: second agent start {AGENT!r} "
                        f"(the first is at line {start[0] + 1}, column {start[1] + 1}); keep one"
                    )
                start = (i, j)
    if start is None:
        raise ValueError(f"{source}: no agent start {AGENT!r}; put one on a free cell")
    tiles = np.array([list(line) for line in lines], dtype="<U1")
    tiles[start] = under_agent
    return GridMap(tiles, start, source)


def require_reachable(grid: GridMap, chars: Iterable[str], blocked: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming the first tile of ``chars`` that the agent cannot reach."""
    seen = grid.reachable(blocked)
    for ch in chars:
        for cell in grid.cells(ch):
            if cell not in seen:
                raise ValueError(
                    f"{grid.source}:{cell[0] + 1}:{cell[1] + 1}: tile {ch!r} is unreachable from the agent's start; "
                    "open a path to it"
                )


def load_map(name: str, legend: Iterable[str], under_agent: str = " ") -> GridMap:
    """Load ``<name>.txt`` from the maps shipped with rledger (the top-level ``envs/`` folder)."""
    path = resources.files("rledger.maps").joinpath(f"{name}.txt")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"map {name!r}: no file envs/{name}.txt among rledger's maps") from None
    return parse_map(text, f"envs/{name}.txt", legend, under_agent)


def _legend(chars: set[str]) -> str:
    return " ".join(repr(c) for c in sorted(chars))
