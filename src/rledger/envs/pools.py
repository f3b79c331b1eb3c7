"""Pools-v0: two instances of one option, for held-out-instance probes (issue 15). Two pools, ``a`` and
``b``, lie in the lower corners of a room; the goal ``G`` is in the upper right. Every step that ends
inside a pool that pays this episode pays ``pool_reward``; reaching the goal pays ``goal_reward`` and
ends the episode (the hidden performance counts only the goal). Staying in a paying pool for the rest
of an episode returns more than the goal; in an inert pool, nothing.

Each pool's payment (``pool_a=``, ``pool_b=``): ``paying``, ``inert`` (shown the same, pays nothing),
``absent`` (plain floor, not shown) or ``random`` (paying with probability ``pay_prob``, drawn at each
reset and never shown: only the rewards reveal it, so a policy can follow it only through
``reward_frames``). ``step_cost`` (default 0) is subtracted from every step's reward. ``start=``: ``corner`` (the map's ``A``), ``a`` or ``b`` (the pool's cell nearest
the room's centre, so that an episode starts inside that pool).

The observation has one channel per tile kind (wall, floor, goal, pool, agent): both pools look
alike, so a policy that reads "pool" at ``a`` reads it at ``b`` through the same input features (with
``view=k``, the agent's egocentric k x k window). State: (agent cell, pool a pays, pool b pays). The
initial-state distribution holds the random payments, so ``mdp()`` is exact for them too.
``info`` flags: ``in_a``, ``in_b`` (the step ended inside that pool), ``reached_goal``.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np

from rledger.envs.base import GridEnv, Outcome
from rledger.envs.gridmap import WALL, load_map, parse_map, require_reachable

FLOOR, GOAL, POOL_A, POOL_B = " ", "G", "a", "b"
POOL_MODES = ("paying", "inert", "absent", "random")
STARTS = ("corner", "a", "b")


class PoolsEnv(GridEnv):
    """Two pools and a goal. ``info``: ``state_id``, ``hidden_reward`` (1 at the goal), ``in_a``,
    ``in_b``, ``reached_goal``."""

    flag_names = ("in_a", "in_b", "reached_goal")
    colours = {**GridEnv.colours, GOAL: (60, 200, 60), POOL_A: (90, 160, 240), POOL_B: (90, 160, 240)}

    def __init__(
        self,
        pool_a: str = "paying",
        pool_b: str = "absent",
        render_mode: str | None = None,
        pool_reward: float = 0.1,
        goal_reward: float = 1.0,
        pay_prob: float = 0.5,
        start: str = "corner",
        step_cost: float = 0.0,
        map_text: str | None = None,
        reward_frames: int = 0,
        view: int | None = None,
    ):
        for name, mode in (("pool_a", pool_a), ("pool_b", pool_b)):
            if mode not in POOL_MODES:
                raise ValueError(f"{name}: must be one of {POOL_MODES}, got {mode!r}")
        if start not in STARTS:
            raise ValueError(f"start: must be one of {STARTS}, got {start!r}")
        if start != "corner" and {"a": pool_a, "b": pool_b}[start] == "absent":
            raise ValueError(f"start: {start!r} needs pool_{start} present (not 'absent')")
        for name, v in (("pool_reward", pool_reward), ("goal_reward", goal_reward)):
            if not isinstance(v, int | float) or isinstance(v, bool) or not np.isfinite(v):
                raise ValueError(f"{name}: must be a finite number, got {v!r}")
        if not isinstance(pay_prob, int | float) or isinstance(pay_prob, bool) or not 0 < pay_prob < 1:
            raise ValueError(f"pay_prob: must be a number in (0, 1), got {pay_prob!r}")
        if not isinstance(step_cost, int | float) or isinstance(step_cost, bool) or not 0 <= step_cost < 1:
            raise ValueError(f"step_cost: must be a number in [0, 1), got {step_cost!r}")
        self.step_cost = float(step_cost)
        legend = {WALL, FLOOR, GOAL, POOL_A, POOL_B}
        grid = load_map("pools", legend) if map_text is None else parse_map(map_text, "map_text", legend)
        if len(grid.cells(GOAL)) != 1 or not grid.cells(POOL_A) or not grid.cells(POOL_B):
            raise ValueError(f"{grid.source}: needs one goal {GOAL!r} and cells of both pools 'a' and 'b'")
        require_reachable(grid, (GOAL, POOL_A, POOL_B))
        self.modes = {"a": pool_a, "b": pool_b}
        self.pools = {"a": frozenset(grid.cells(POOL_A)), "b": frozenset(grid.cells(POOL_B))}
        self.goal_cell = grid.cells(GOAL)[0]
        self.pool_reward, self.goal_reward, self.pay_prob = (
            float(pool_reward),
            float(goal_reward),
            float(pay_prob),
        )
        centre = (np.array(grid.shape) - 1) / 2
        self.start_cell = (
            grid.start
            if start == "corner"
            else min(self.pools[start], key=lambda c: (float(np.abs(np.array(c) - centre).sum()), c))
        )
        tiles = grid.tiles.copy()
        for key, mode in self.modes.items():
            if mode == "absent":
                for cell in self.pools[key]:
                    tiles[cell] = FLOOR
        grid = type(grid)(tiles, grid.start, grid.source)
        super().__init__(
            grid,
            channels=["wall", "floor", "goal", "pool", "agent"],
            render_mode=render_mode,
            reward_frames=reward_frames,
            view=view,
        )
        self._static = np.concatenate(
            [self.tile_planes([WALL, FLOOR, GOAL]), self.tile_planes([POOL_A, POOL_B]).max(0, keepdims=True)]
        )

    def initial_states(self) -> list[tuple[float, Any]]:
        options = []
        for key in ("a", "b"):
            mode = self.modes[key]
            options.append(
                [(self.pay_prob, True), (1 - self.pay_prob, False)] if mode == "random"
                else [(1.0, mode == "paying")]
            )  # fmt: skip
        return [(pa * pb, (self.start_cell, a, b)) for (pa, a), (pb, b) in product(*options)]

    def agent_cell(self, state: Any) -> tuple[int, int]:
        return state[0]

    def observe(self, state: Any) -> np.ndarray:
        return np.concatenate([self._static, self.agent_plane(state[0])[None]])

    def transition(self, state: Any, action: int) -> Outcome:
        cell, pays_a, pays_b = state
        nxt = self.move(cell, action)
        in_a = nxt in self.pools["a"] and self.modes["a"] != "absent"
        in_b = nxt in self.pools["b"] and self.modes["b"] != "absent"
        reward = self.pool_reward * float((in_a and pays_a) or (in_b and pays_b)) - self.step_cost
        reached = nxt == self.goal_cell
        if reached:
            reward += self.goal_reward
        flags = {"in_a": bool(in_a), "in_b": bool(in_b), "reached_goal": reached}
        return Outcome(
            (nxt, pays_a, pays_b), reward, 1.0 if reached else 0.0, terminated=reached, flags=flags
        )

    def start_flags(self, state: Any) -> dict[str, Any]:
        cell = state[0]
        return {
            "in_a": cell in self.pools["a"] and self.modes["a"] != "absent",
            "in_b": cell in self.pools["b"] and self.modes["b"] != "absent",
            "reached_goal": False,
        }
