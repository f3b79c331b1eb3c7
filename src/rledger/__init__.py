"""rledger: measure what the reinforcement signal does inside PPO.

``import rledger`` registers the gridworlds (``rledger/...`` gymnasium ids) and nothing heavier:
``InstrumentedPPO`` (torch, stable-baselines3) and ``Ledger`` (pyarrow, DuckDB) are imported when first
used, so ``import rledger.envs`` needs numpy and gymnasium only.
"""

from typing import TYPE_CHECKING, Any

import rledger.envs  # noqa: F401  (registers the rledger/ gymnasium ids)
from rledger._version import __version__

if TYPE_CHECKING:
    from rledger.ledger import Ledger, Ledgers
    from rledger.ppo import InstrumentedPPO

__all__ = ["InstrumentedPPO", "Ledger", "Ledgers", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "InstrumentedPPO":
        from rledger.ppo import InstrumentedPPO

        return InstrumentedPPO
    if name in ("Ledger", "Ledgers"):
        import rledger.ledger

        return getattr(rledger.ledger, name)
    raise AttributeError(f"module 'rledger' has no attribute {name!r}")
