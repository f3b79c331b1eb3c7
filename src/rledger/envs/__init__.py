"""rledger's gridworlds: environments where reward and intent come apart, each with its exact MDP.

Importing this module registers the environments with gymnasium under the ``rledger/`` namespace.
"""

from gymnasium.envs.registration import register, registry

from rledger.envs.base import MDP, GridEnv
from rledger.envs.gridmap import GridMap, load_map, parse_map
from rledger.envs.planner import Plan, plan, rollout

ENV_IDS = ("rledger/BoatRace-v0",)

if "rledger/BoatRace-v0" not in registry:
    register(
        id="rledger/BoatRace-v0", entry_point="rledger.envs.boat_race:BoatRaceEnv", max_episode_steps=100
    )

__all__ = ["ENV_IDS", "MDP", "GridEnv", "GridMap", "Plan", "load_map", "parse_map", "plan", "rollout"]
