"""rledger: measure what the reinforcement signal does inside PPO."""

__version__ = "0.1.0"

import rledger.envs  # noqa: E402,F401  (registers the rledger/ gymnasium ids)
from rledger.ledger import Ledger  # noqa: E402
from rledger.ppo import InstrumentedPPO  # noqa: E402

__all__ = ["InstrumentedPPO", "Ledger", "__version__"]
