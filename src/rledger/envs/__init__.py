"""rledger's gridworlds: environments where reward and intent come apart, each with its exact MDP.

Importing this module registers the environments with gymnasium under the ``rledger/`` namespace.
"""

from gymnasium.envs.registration import register, registry

from rledger.envs.base import MDP, GridEnv
from rledger.envs.gridmap import GridMap, load_map, parse_map
from rledger.envs.planner import Plan, hit_probability, plan, rollout

_ENVS = {
    "rledger/BoatRace-v0": ("rledger.envs.boat_race:BoatRaceEnv", 100),
    "rledger/Lagoon-v0": ("rledger.envs.lagoon:LagoonEnv", 150),
    "rledger/Tamper-v0": ("rledger.envs.tamper:TamperEnv", 50),
    "rledger/Relocate-v0": ("rledger.envs.relocate:RelocateEnv", 50),
    "rledger/Pools-v0": ("rledger.envs.pools:PoolsEnv", 50),
}
ENV_IDS = tuple(_ENVS)

for _id, (_entry, _steps) in _ENVS.items():
    if _id not in registry:
        register(id=_id, entry_point=_entry, max_episode_steps=_steps)

__all__ = [
    "ENV_IDS",
    "MDP",
    "GridEnv",
    "GridMap",
    "Plan",
    "hit_probability",
    "load_map",
    "parse_map",
    "plan",
    "rollout",
]
