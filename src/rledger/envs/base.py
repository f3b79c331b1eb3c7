"""Shared machinery of the gridworlds: deterministic dynamics on a map, exact state indices, the MDP.

A subclass defines its map, its observation channels, its initial-state distribution and a
deterministic ``transition(state, action)``; this class provides the gymnasium API, ``info`` with the
exact ``state_id`` and the hidden reward, rendering, and ``mdp()``: the reachable states enumerated
from the initial states, with ``P[s][a] = [(prob, next_s, reward, hidden, done)]`` as Gymnasium's
FrozenLake lays it out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rledger.envs.gridmap import WALL, GridMap

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES: dict[int, tuple[int, int]] = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}
ACTION_NAMES = ("up", "down", "left", "right")
REWARD_BOUND = 1000.0
"""Rewards in the observation (``reward_frames``) are clipped to +-REWARD_BOUND (the Box's bounds)."""


def _shown(reward: float) -> float:
    """A reward as the observation shows it (clipped to +-REWARD_BOUND)."""
    return float(np.clip(reward, -REWARD_BOUND, REWARD_BOUND))


State = Hashable


@dataclass
class Outcome:
    """The deterministic result of one action in one state."""

    state: State
    reward: float
    hidden: float
    terminated: bool = False
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class MDP:
    """The exact model over the reachable states.

    ``P[s][a]`` is a list of ``(prob, next_s, reward, hidden, done)``; ``initial`` a list of
    ``(prob, s)``; ``states[s]`` the environment's own state object of index ``s``.
    """

    P: list[list[list[tuple[float, int, float, float, bool]]]]
    initial: list[tuple[float, int]]
    states: list[State]

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_actions(self) -> int:
        return len(self.P[0]) if self.P else 0


class GridEnv(gym.Env[np.ndarray, np.int64]):
    """Base class of rledger's gridworlds (Discrete(4) actions: up, down, left, right)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    flag_names: ClassVar[tuple[str, ...]] = ()
    colours: ClassVar[dict[str, tuple[int, int, int]]] = {WALL: (60, 60, 60), " ": (235, 235, 235)}
    cell_pixels: ClassVar[int] = 16
    # defaults of attributes added after some checkpoints were written: an env unpickled from such a
    # checkpoint (a resumed run) lacks them and behaves as it did then
    view: int | None = None

    def __init__(
        self,
        grid: GridMap,
        channels: list[str],
        render_mode: str | None = None,
        reward_frames: int = 0,
        view: int | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: {render_mode!r} is not one of {self.metadata['render_modes']}")
        if not isinstance(reward_frames, int) or reward_frames < 0:
            raise ValueError(f"reward_frames: must be an integer >= 0, got {reward_frames!r}")
        if view is not None and (
            not isinstance(view, int) or isinstance(view, bool) or view < 3 or view % 2 == 0
        ):
            raise ValueError(
                f"view: must be an odd integer >= 3 (the egocentric window's side), got {view!r}"
            )
        if view is not None and "wall" not in channels:
            raise ValueError("view: needs a 'wall' channel, which shows what lies beyond the map's edge")
        self.view = view
        self.grid = grid
        self.channels = channels
        self.render_mode = render_mode
        self.reward_frames = reward_frames
        rows, cols = grid.shape if view is None else (view, view)
        self.action_space = spaces.Discrete(4)
        frame = len(channels) * rows * cols
        if reward_frames == 0:
            self.observation_space = spaces.Box(0.0, 1.0, (frame,), np.float32)
        else:  # the last reward_frames frames, oldest first, then the rewards that led to them
            low = np.concatenate([np.zeros(frame * reward_frames), np.full(reward_frames, -REWARD_BOUND)])
            high = np.concatenate([np.ones(frame * reward_frames), np.full(reward_frames, REWARD_BOUND)])
            self.observation_space = spaces.Box(
                low.astype(np.float32), high.astype(np.float32), dtype=np.float32
            )
        self._frames: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._state: State | None = None
        self._index: dict[State, int] | None = None
        self._states: list[State] | None = None
        self._live: set[State] = set()

    # ------------------------------------------------------------------ to define in subclasses
    def initial_states(self) -> list[tuple[float, State]]:
        raise NotImplementedError

    def transition(self, state: State, action: int) -> Outcome:
        raise NotImplementedError

    def observe(self, state: State) -> np.ndarray:
        """``(channels, rows, cols)`` one-hot planes of the state."""
        raise NotImplementedError

    def agent_cell(self, state: State) -> tuple[int, int]:
        raise NotImplementedError

    def start_flags(self, state: State) -> dict[str, Any]:
        """Values of the env-specific info flags at the start of an episode."""
        return dict.fromkeys(self.flag_names, False)

    def start_reward(self, state: State) -> float:
        """The last reward shown (with ``reward_frames``) in the first observation of an episode that
        starts in ``state``: 0, unless the env starts its episodes just after a scripted step (the
        lagoon's ``start="target"``). Never returned as a reward."""
        return 0.0

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        init = self.initial_states()
        probs = np.array([p for p, _ in init], dtype=np.float64)
        k = int(self.np_random.choice(len(init), p=probs / probs.sum())) if len(init) > 1 else 0
        self._state = init[k][1]
        if self.reward_frames:
            self._frames = [self._frame()] * self.reward_frames
            self._rewards = [0.0] * (self.reward_frames - 1) + [_shown(self.start_reward(self._state))]
        info = {"state_id": self.state_id(self._state), "hidden_reward": 0.0, **self.start_flags(self._state)}
        return self._obs(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("step() called before reset()")
        a = int(action)
        if not 0 <= a < 4:
            raise ValueError(f"action: {action!r} is not in Discrete(4) (0 up, 1 down, 2 left, 3 right)")
        out = self.transition(self._state, a)
        self._state = out.state
        if self.reward_frames:
            self._frames = [*self._frames[1:], self._frame()]
            self._rewards = [*self._rewards[1:], _shown(out.reward)]
        info = {"state_id": self.state_id(out.state), "hidden_reward": float(out.hidden), **out.flags}
        return self._obs(), float(out.reward), bool(out.terminated), False, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None or self._state is None:
            return None
        rows, cols = self.grid.shape
        agent = self.agent_cell(self._state)
        chars = self.render_chars(self._state)
        if self.render_mode == "ansi":
            return (
                "\n".join(
                    "".join("A" if (r, c) == agent else chars[r][c] for c in range(cols)) for r in range(rows)
                )
                + "\n"
            )
        px = self.cell_pixels
        img = np.zeros((rows * px, cols * px, 3), dtype=np.uint8)
        for r in range(rows):
            for c in range(cols):
                colour = (30, 90, 200) if (r, c) == agent else self.colours.get(chars[r][c], (200, 200, 120))
                img[r * px : (r + 1) * px, c * px : (c + 1) * px] = colour
        return img

    def render_chars(self, state: State) -> list[list[str]]:
        """The map as characters for this state (subclasses show changing tiles)."""
        return self.grid.tiles.tolist()

    # ------------------------------------------------------------------ exact model
    def state_id(self, state: State) -> int:
        """Index of ``state`` among the reachable states (the order of ``mdp().states``)."""
        self._enumerate()
        assert self._index is not None
        return self._index[state]

    def _enumerate(self) -> None:
        """Index the states reachable from the initial states; states entered only by a terminating
        step (the episode's last observation) are indexed too, after a live state's successors."""
        if self._index is not None:
            return
        index: dict[State, int] = {}
        states: list[State] = []
        live: set[State] = set()
        queue: deque[State] = deque()

        def add(s: State, expand: bool) -> None:
            if s not in index:
                index[s] = len(states)
                states.append(s)
            if expand and s not in live:
                live.add(s)
                queue.append(s)

        for _, s in self.initial_states():
            add(s, True)
        while queue:
            s = queue.popleft()
            for a in range(4):
                out = self.transition(s, a)
                add(out.state, not out.terminated)
        self._index, self._states, self._live = index, states, live

    def mdp(self) -> MDP:
        """The exact model over the states reachable from the initial states. A state entered only by a
        terminating step has absorbing, zero-payoff rows marked done."""
        self._enumerate()
        assert self._index is not None and self._states is not None
        index, states = self._index, self._states
        P: list[list[list[tuple[float, int, float, float, bool]]]] = []
        for i, s in enumerate(states):
            if s not in self._live:
                P.append([[(1.0, i, 0.0, 0.0, True)] for _ in range(4)])
                continue
            row = []
            for a in range(4):
                out = self.transition(s, a)
                row.append(
                    [(1.0, index[out.state], float(out.reward), float(out.hidden), bool(out.terminated))]
                )
            P.append(row)
        initial = [(p, index[s]) for p, s in self.initial_states()]
        return MDP(P, initial, list(states))

    def frame(self, state: State) -> np.ndarray:
        """One frame of ``state`` as the policy sees it (flat float32): the whole map's planes, or with
        ``view=k`` the k x k window centred on the agent (the agent's plane then always marks the
        centre), the cells beyond the map's edge shown as wall. An option seen through such a window
        shows the same features wherever it stands: the egocentric view of MiniGrid's agents."""
        planes = self.observe(state).astype(np.float32)
        if self.view is not None:
            k, (rows, cols) = self.view, planes.shape[1:]
            r, c = self.agent_cell(state)
            r, c = r - k // 2, c - k // 2  # the window's top-left cell, on the map's grid
            window = np.zeros((planes.shape[0], k, k), np.float32)
            window[self.channels.index("wall")] = 1.0  # beyond the map's edge
            r0, r1, c0, c1 = max(r, 0), min(r + k, rows), max(c, 0), min(c + k, cols)
            window[:, r0 - r : r1 - r, c0 - c : c1 - c] = planes[:, r0:r1, c0:c1]
            planes = window
        return planes.reshape(-1)

    def _frame(self) -> np.ndarray:
        assert self._state is not None
        return self.frame(self._state)

    def _obs(self) -> np.ndarray:
        if not self.reward_frames:
            return self._frame()
        return np.concatenate([*self._frames, np.asarray(self._rewards, dtype=np.float32)])

    def flat_observation(self, state: State) -> np.ndarray:
        """The observation the policy gets in ``state`` (flat float32): with ``reward_frames``, as if
        the agent had stood in ``state`` for that many steps with no reward."""
        frame = self.frame(state)
        if not self.reward_frames:
            return frame
        return np.concatenate([*([frame] * self.reward_frames), np.zeros(self.reward_frames, np.float32)])

    def observation_for(self, state_id: int) -> np.ndarray:
        """The observation the policy gets in the state of index ``state_id`` (:meth:`flat_observation`):
        how a watched pair given by state id (``InstrumentedPPO(watch=...)``) is shown to the policy."""
        self._enumerate()
        assert self._states is not None
        if not 0 <= state_id < len(self._states):
            raise ValueError(f"state id {state_id}: this env has states 0 .. {len(self._states) - 1}")
        return self.flat_observation(self._states[state_id])

    # ------------------------------------------------------------------ helpers
    def move(self, cell: tuple[int, int], action: int) -> tuple[int, int]:
        """The cell an action leads to (walls and the map's edge block)."""
        dr, dc = MOVES[action]
        nxt = (cell[0] + dr, cell[1] + dc)
        return nxt if self.grid.passable(nxt) else cell

    def tile_planes(self, kinds: list[str]) -> np.ndarray:
        """One plane per tile character in ``kinds``."""
        return np.stack([(self.grid.tiles == k) for k in kinds]).astype(np.float32)

    def agent_plane(self, cell: tuple[int, int]) -> np.ndarray:
        plane = np.zeros(self.grid.shape, dtype=np.float32)
        plane[cell] = 1.0
        return plane
