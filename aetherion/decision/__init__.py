"""The decision stage: strategy → BUY / SELL / HOLD with gating, cooldown and duplicate
protection (``docs/decision.md``)."""

from aetherion.decision.config import DecisionConfig, default_timeframe
from aetherion.decision.model import (
    ACTIONS,
    POSITIONS,
    Action,
    Decision,
    PolicyState,
    Position,
    decision_id,
)
from aetherion.decision.policy import DecisionPolicy
from aetherion.decision.store import (
    decision_history,
    latest_decisions,
    load_policy_state,
    write_decisions,
)

__all__ = [
    "ACTIONS", "POSITIONS", "Action", "Decision", "DecisionConfig", "DecisionPolicy",
    "PolicyState", "Position", "decision_history", "decision_id", "default_timeframe",
    "latest_decisions", "load_policy_state", "write_decisions",
]
